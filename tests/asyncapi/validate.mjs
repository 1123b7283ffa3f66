// Checks AsyncAPI documents with the official parser (@asyncapi/parser, with the official Avro
// schema parser registered). Parser 3.6.6 runs schema parsers' validation only on AsyncAPI 2
// documents, so every Avro schema of a 3.x document is also given to the official Avro schema
// parser's own validate() (avsc), reported as code "avro-schema". Pinned in package-lock.json
// beside this file; installed into the git-ignored cache by tests/asyncapi/parser.py, which
// runs this script with NODE_PATH set to that node_modules directory.
//
//   NODE_PATH=<cache>/node_modules node tests/asyncapi/validate.mjs doc.json [doc.yaml ...]
//
// Prints one JSON object on stdout: {"<file>": [{"severity", "code", "message", "path"}, ...]}
// with every diagnostic the parser reports. Exit code 0: no errors (warnings may be listed),
// 1: at least one document has an error, 2: cannot run (missing parser, unreadable file).
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { resolve } from "node:path";

const SEVERITIES = ["error", "warning", "info", "hint"];
const require = createRequire(import.meta.url); // honours NODE_PATH

let Parser, AvroSchemaParser, yaml;
try {
  ({ Parser } = require("@asyncapi/parser"));
  ({ AvroSchemaParser } = require("@asyncapi/avro-schema-parser"));
  yaml = require("js-yaml"); // the parser's own YAML reader
} catch (error) {
  process.stderr.write(`cannot load the AsyncAPI parser (NODE_PATH?): ${error.message}\n`);
  process.exit(2);
}

const files = process.argv.slice(2);
if (files.length === 0) {
  process.stderr.write("usage: node validate.mjs FILE [FILE ...]\n");
  process.exit(2);
}

const avro = AvroSchemaParser();
const avroFormats = new Set(avro.getMimeTypes());
const parser = new Parser();
parser.registerSchemaParser(avro);

// Every Multi Format Schema Object in an Avro format, with its path.
function* avroSchemas(node, path = []) {
  if (node === null || typeof node !== "object") return;
  if (avroFormats.has(node.schemaFormat) && node.schema !== undefined) {
    yield { data: node.schema, path: [...path, "schema"] };
    return;
  }
  for (const [key, value] of Object.entries(node)) yield* avroSchemas(value, [...path, key]);
}

const report = {};
let errors = 0;
for (const file of files) {
  let text;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    process.stderr.write(`cannot read ${file}: ${error.message}\n`);
    process.exit(2);
  }
  const { diagnostics } = await parser.parse(text, { source: resolve(file) });
  const found = diagnostics.map((d) => ({
    severity: SEVERITIES[d.severity] ?? String(d.severity),
    code: String(d.code),
    message: d.message,
    path: d.path.map(String),
  }));
  const raw = yaml.load(text);
  if (String(raw?.asyncapi ?? "").startsWith("3.")) {
    for (const input of avroSchemas(raw)) {
      for (const problem of await avro.validate(input)) {
        found.push({ severity: "error", code: "avro-schema", message: problem.message, path: input.path });
      }
    }
  }
  report[file] = found;
  errors += found.filter((d) => d.severity === "error").length;
}
process.stdout.write(`${JSON.stringify(report, null, 1)}\n`);
process.exit(errors > 0 ? 1 : 0);
