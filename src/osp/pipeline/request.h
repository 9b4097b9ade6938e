// Generation settings as JSON (one object per request): the lines of `osp generate --prompts`
// and the body of `osp serve`'s POST /v1/generations. Every field has the meaning of the
// `osp generate` flag of the same name; validation stays in validate_options / plan_generation.
//
//   prompt (string, required), negative_prompt (string), no_negative (bool), seed (integer),
//   size ("WxH"), width / height (integers, instead of size), frames, steps (integers),
//   sampler ("unipc" | "euler"), shift (number), guidance (number), attention
//   ("auto" | "full" | "hybrid"), fps (integer), cache ("none" | "teacache:THRESH"), and with
//   allow_out (local runs: batch lines, not server requests): out and noise (strings, paths).
//
// An unknown field, a field of the wrong type or a non-object is an osp::Error naming the field.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "osp/pipeline/pipeline.h"

namespace osp::pipeline {

// The field names accepted (with or without "out" and "noise").
std::vector<std::string> request_fields(bool allow_out);

// Applies the fields of `j` (a JSON object) over `o`. Throws osp::Error.
void apply_json_settings(const nlohmann::json& j, GenerateOptions& o, bool allow_out);

// A short file-name-safe form of a prompt: lower-case ASCII letters and digits, other runs
// of characters as one '-', at most max_len characters ("a red fox, at dusk" → "a-red-fox-at-dusk");
// "video" when nothing is left.
std::string prompt_slug(const std::string& prompt, size_t max_len = 40);

}  // namespace osp::pipeline
