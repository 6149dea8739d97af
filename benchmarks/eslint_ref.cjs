// ESLint as the reference for loralint's `naming` and `else-return` oracles (see eslint_ref.py).
//
// Usage: node eslint_ref.cjs < request.json > findings.jsonl
// request: {"files": [{"path": "...", "code": "..." (optional: read from path when absent)}, ...]}
// Output: one JSON line a file: {"path", "fatal": null | "message", "sourceType", "findings": [
//   {"rule": "camelcase" | "no-else-return", "line", "column", "endLine", "endColumn", "message"}]}.
//
// Only the two rules are on, configured as loralint's rules are documented:
//   camelcase: {properties: "never", ignoreImports: true, ignoreGlobals: true}
//   no-else-return: {allowElseIf: true}
// JS/JSX (.js .mjs .cjs .jsx) is parsed by espree with JSX on, TS/TSX by @typescript-eslint/parser. A .js file
// is tried as a module first (ESLint's default) and as a script when that does not parse; .cjs is commonjs.
// `/* eslint-env */` comments, which ESLint 10 refuses as a fatal error, are renamed (same length) first.
// Inline configuration comments are read (so `/* global */` comments declare globals, which ignoreGlobals
// ignores) but messages silenced by `eslint-disable` comments are kept: loralint has its own suppressions.
"use strict";

const fs = require("fs");
const path = require("path");
const { Linter } = require("eslint");
const tsParser = require("@typescript-eslint/parser");

const RULES = {
  camelcase: ["error", { properties: "never", ignoreImports: true, ignoreGlobals: true }],
  "no-else-return": ["error", { allowElseIf: true }],
};

function config(ext, sourceType) {
  const ts = [".ts", ".mts", ".cts", ".tsx"].includes(ext);
  const languageOptions = ts
    ? { parser: tsParser, sourceType: "module", ecmaVersion: "latest",
        parserOptions: { ecmaFeatures: { jsx: ext === ".tsx" } } }
    : { sourceType, ecmaVersion: "latest", parserOptions: { ecmaFeatures: { jsx: true } } };
  return [{
    files: ["**/*" + ext],  // a pattern naming the extension (a bare "**/*" lints only .js/.mjs/.cjs)
    languageOptions,
    linterOptions: { reportUnusedDisableDirectives: "off", reportUnusedInlineConfigs: "off" },
    rules: RULES,
  }];
}

const linter = new Linter({ configType: "flat" });

function lint(file) {
  let code = file.code;
  if (code === undefined) code = fs.readFileSync(file.path, "utf8");
  const ext = path.extname(file.path).toLowerCase();
  const name = "file" + ext; // a virtual name: only the extension matters
  const tries = ext === ".cjs" ? ["commonjs"] : ext === ".js" || ext === ".jsx" ? ["module", "script"] : ["module"];
  // ESLint 10 refuses `/* eslint-env */` comments (a fatal error, no rule runs): rename them, same length
  code = code.replace(/(\/\*\s*)eslint-env\b/g, "$1eslint_env");
  let first = null;
  for (const sourceType of tries) {
    const messages = linter.verify(code, config(ext, sourceType), { filename: name });
    const fatal = messages.find(m => m.fatal);
    if (fatal) {
      first = first || { path: file.path, fatal: `${fatal.line}:${fatal.column} ${fatal.message}`, sourceType,
                         findings: [] };
      continue;
    }
    const all = messages.concat(linter.getSuppressedMessages());
    const findings = all.filter(m => m.ruleId in RULES).map(m => ({
      rule: m.ruleId, line: m.line, column: m.column, endLine: m.endLine, endColumn: m.endColumn,
      message: m.message,
    }));
    findings.sort((a, b) => a.line - b.line || a.column - b.column);
    return { path: file.path, fatal: null, sourceType, findings };
  }
  return first;
}

const request = JSON.parse(fs.readFileSync(0, "utf8"));
for (const file of request.files) {
  let res;
  try {
    res = lint(file);
  } catch (e) {
    res = { path: file.path, fatal: `crash: ${e && e.message}`, findings: [] };
  }
  process.stdout.write(JSON.stringify(res) + "\n");
}
