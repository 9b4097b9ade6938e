// The YAML reader of config files (io/yaml.h): nesting, sequences (also under their key at the
// key's indentation, and of mappings), flow collections, the YAML 1.2 core-schema scalars (1e-4 a
// number, not PyYAML's string), quoting and comments — and a clear error with the line number for
// everything it does not read.
#include <gtest/gtest.h>

#include "osp/core/error.h"
#include "osp/io/yaml.h"
#include "test_util.h"

using namespace osp;
using json = nlohmann::json;

namespace {

json yaml(const std::string& text) { return io::parse_yaml(text, "test.yaml"); }

// The error message of parsing `text` ("" when it parses).
std::string yaml_error(const std::string& text) {
  return test::error_of([&] { yaml(text); });
}

}  // namespace

TEST(Yaml, NestedMappingsSequencesAndComments) {
  const json j = yaml(R"(# a training config
---
seed: 1024          # the run's seed
output_dir: "/path/to/output"
use_sequence_parallel: False
reshard_after_forward: Null
optimizer_config:
  lr: 0.00002
  weight_decay: 0
lora_config:
  rank: 32
  target_modules:
    - "self_attn.q"
    - cross_attn.o   # plain
  # lora_path: "/path/to/existing/lora"
rl_config:
  reward_fn:
    videoalign: 1.0
list_at_key_indent:
- 1
- two
mappings_in_a_list:
  - name: a
    weight: 0.5
  - name: b
    weight: 1
...
)");
  const json want = json::parse(R"({
    "seed": 1024, "output_dir": "/path/to/output", "use_sequence_parallel": false,
    "reshard_after_forward": null,
    "optimizer_config": {"lr": 2e-05, "weight_decay": 0},
    "lora_config": {"rank": 32, "target_modules": ["self_attn.q", "cross_attn.o"]},
    "rl_config": {"reward_fn": {"videoalign": 1.0}},
    "list_at_key_indent": [1, "two"],
    "mappings_in_a_list": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 1}]})");
  EXPECT_EQ(j, want) << j.dump(2);
  EXPECT_TRUE(j["seed"].is_number_integer());
  EXPECT_TRUE(j["optimizer_config"]["weight_decay"].is_number_integer());
  EXPECT_TRUE(j["optimizer_config"]["lr"].is_number_float());
}

TEST(Yaml, CoreSchemaScalars) {
  const json j = yaml(R"(
a: 1e-4
b: -3
c: 0x1F
d: 0o17
e: .5
f: +2.5E+3
g: ~
h:
i: TRUE
j: false
k: 1.2.3
l: 'it''s # not a comment'
m: "tab\there \u00e9 \"q\""
n: [1, 2.5, x, "y z", [], {p: 1, q: [a, b]}]
o: {}
p: http://example.com:8080/x
q: it's plain
r: 007
)");
  EXPECT_TRUE(j["a"].is_number_float());
  EXPECT_DOUBLE_EQ(j["a"].get<double>(), 1e-4);  // YAML 1.2: a number (PyYAML 1.1: a string)
  EXPECT_EQ(j["b"], -3);
  EXPECT_EQ(j["c"], 31);
  EXPECT_EQ(j["d"], 15);
  EXPECT_DOUBLE_EQ(j["e"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(j["f"].get<double>(), 2500.0);
  EXPECT_TRUE(j["g"].is_null());
  EXPECT_TRUE(j["h"].is_null());
  EXPECT_EQ(j["i"], true);
  EXPECT_EQ(j["j"], false);
  EXPECT_EQ(j["k"], "1.2.3");
  EXPECT_EQ(j["l"], "it's # not a comment");
  EXPECT_EQ(j["m"], "tab\there \xc3\xa9 \"q\"");
  EXPECT_EQ(j["n"], json::parse(R"([1, 2.5, "x", "y z", [], {"p": 1, "q": ["a", "b"]}])"));
  EXPECT_EQ(j["o"], json::object());
  EXPECT_EQ(j["p"], "http://example.com:8080/x");
  EXPECT_EQ(j["q"], "it's plain");
  EXPECT_EQ(j["r"], 7);
  EXPECT_TRUE(yaml("").is_null());
  EXPECT_TRUE(yaml("# only a comment\n\n").is_null());
  EXPECT_EQ(yaml("- a\n- - b\n  - c\n"), json::parse(R"(["a", ["b", "c"]])"));
}

TEST(Yaml, RefusesWhatItDoesNotReadWithTheLine) {
  const std::pair<const char*, const char*> cases[] = {
      {"a: 1\n\tb: 2\n", "line 2: a tab in the indentation"},
      {"a: &x 1\nb: *x\n", "line 1: anchors"},
      {"a: !!float 1\n", "line 1: tags"},
      {"a: |\n  text\n", "line 1: block scalars"},
      {"a: one\n  two\n", "line 2: unexpected indentation or content"},
      {"a: 1\na: 2\n", "line 2: duplicate key 'a'"},
      {"a: 1\n---\nb: 2\n", "line 2: a second YAML document"},
      {"? complex\n: value\n", "line 1: complex mapping keys"},
      {"a: \"open\n", "line 1: unterminated"},
      {"a: [1, 2\n", "line 1: expected ',' or ']'"},
      {"a: .inf\n", "line 1: '.inf': settings must be finite"},
      {"a:\n  - 1\n  b: 2\n", "line 3: unexpected indentation or content"},
      {"a: \"\\q\"\n", "line 1: unknown escape"},
      {"a: 1e999\n", "line 1: number '1e999' is out of the range"},  // found by fuzz_yaml
      {"a: 99999999999999999999\n", "line 1: integer '99999999999999999999' is out of range"},
      {"x:\n    a: 1\n  b: 2\n", "line 3: unexpected indentation or content"},
  };
  for (const auto& [text, want] : cases) {
    const std::string e = yaml_error(text);
    EXPECT_NE(e.find("test.yaml, " + std::string(want)), std::string::npos) << "for:\n" << text << "\ngot: " << e;
  }
}

TEST(Yaml, PathsByExtension) {
  EXPECT_TRUE(io::is_yaml_path("run.yaml"));
  EXPECT_TRUE(io::is_yaml_path("configs/osp_14b_RL.YML"));
  EXPECT_FALSE(io::is_yaml_path("run.json"));
  EXPECT_FALSE(io::is_yaml_path("yaml"));
}

// Found by fuzz_yaml: bytes that are not UTF-8 (which no JSON value can hold) are refused with the
// line, as are \u escapes of lone surrogates.
TEST(Yaml, RefusesTextThatIsNotUtf8) {
  EXPECT_NE(yaml_error("a: 1\nb: \xff\n").find("test.yaml, line 2: not valid UTF-8"), std::string::npos);
  EXPECT_NE(yaml_error("a: \xc0\xaf\n").find("line 1: not valid UTF-8"), std::string::npos);  // overlong '/'
  EXPECT_NE(yaml_error("a: \xe2\x82\n").find("line 1: not valid UTF-8"), std::string::npos);  // truncated
  EXPECT_NE(yaml_error("a: \"\\ud800\"\n").find("line 1: a \\u escape of a UTF-16 surrogate"), std::string::npos);
  EXPECT_EQ(yaml("a: \"\xe2\x82\xac\"\n")["a"], "\xe2\x82\xac");  // the euro sign passes
}
