"""Run with the Python that has cloud-init's own package (Debian: /usr/bin/python3): reads
user-data (plain, gzipped or MIME multipart) from the file named by argv[1], processes it with
cloud-init's UserDataProcessor and merges its cloud-config parts with cloud-init's
CloudConfigPartHandler, exactly as `cloud-init init` does on a VM, and prints JSON:
{"parts": [{"filename", "content_type", "merge_type", "payload"}], "merged": <the combined
cloud-config>}. Used by test_cloudinit.py."""

import json
import sys
import tempfile

from cloudinit import handlers, helpers, user_data, util
from cloudinit.handlers.cloud_config import CloudConfigPartHandler


def main() -> int:
    with open(sys.argv[1], "rb") as f:
        blob = f.read()
    with tempfile.TemporaryDirectory() as tmp:
        paths = helpers.Paths({"cloud_dir": tmp, "run_dir": tmp})
        msg = user_data.UserDataProcessor(paths).process(util.decomp_gzip(blob, quiet=True))
        handler = CloudConfigPartHandler(paths)
        handler.cloud_fn = tmp + "/merged.yaml"  # where it writes the merged cloud-config
        parts = []
        handler.handle_part(None, handlers.CONTENT_START, None, None, None, None)
        for part in msg.walk():
            if part.is_multipart():
                continue
            payload = util.fully_decoded_payload(part)
            ctype = part.get_content_type()
            filename = part.get_filename() or "part"
            parts.append({
                "filename": filename,
                "content_type": ctype,
                "merge_type": part.get("Merge-Type"),
                "payload": payload,
            })
            if ctype == "text/cloud-config":
                handler.handle_part(None, ctype, filename, payload, None, dict(part.items()))
        handler.handle_part(None, handlers.CONTENT_END, None, None, None, None)
        merged = util.load_yaml(util.load_file(tmp + "/merged.yaml"))
    json.dump({"parts": parts, "merged": merged}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
