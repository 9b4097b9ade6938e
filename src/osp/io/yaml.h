// A YAML reader for configuration files (`osp train --config run.yaml`, `osp rl --config`): the
// block subset configuration files use, read into the same JSON value a .json config gives.
//
// Read:
//   - block mappings (`key: value`, nesting by indentation with spaces) and block sequences
//     (`- item`, also `- key: value` starting a mapping item, and a sequence directly under its
//     key at the key's own indentation);
//   - flow collections on one line: `[a, b]`, `{a: 1, b: [2, 3]}`;
//   - scalars by the YAML 1.2 core schema: null (`null`, `Null`, `NULL`, `~`, nothing), booleans
//     (`true`/`True`/`TRUE`, `false`/...), integers (decimal, `0x…`, `0o…`), floats (`1.5`,
//     `1e-4`, `.5`, `.inf`, `.nan`), anything else a string; single- and double-quoted strings
//     (with `''` and the usual backslash escapes); `#` comments; `---` / `...` markers.
//   Note: `1e-4` is a number here (YAML 1.2); PyYAML (YAML 1.1) reads it as the string "1e-4" —
//   the pitfall of OSP-Next's README (osp-next-spec §10), which osp does not repeat.
// Refused with the line number: tabs in indentation, anchors and aliases (`&a`, `*a`), tags
// (`!!float`), block scalars (`|`, `>`), plain scalars continued on the next line, complex keys
// (`? `), several documents, duplicate keys, and anything else that does not parse.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

namespace osp::io {

// The document in `text` as JSON (an empty document is null). `source` names it in errors
// ("config run.yaml, line 7: ..."). Throws osp::Error.
nlohmann::json parse_yaml(const std::string& text, const std::string& source);

// Whether a path names a YAML file (.yaml / .yml, any case).
bool is_yaml_path(const std::string& path);

}  // namespace osp::io
