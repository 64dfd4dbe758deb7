#!/bin/sh
# The lab's prerequisites are installed by the project's one set-up script.
exec bash "$(dirname "$0")/../scripts/setup.sh"
