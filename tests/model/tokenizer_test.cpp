// umT5 tokenizer: Wan's prompt cleaning and SentencePiece encoding with </s>, truncation and
// padding.  The SentencePiece model is trained inside the test from a generated corpus.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "osp/core/error.h"
#include "osp/model/tokenizer.h"

#ifdef OSP_HAVE_SENTENCEPIECE
#include <sentencepiece_trainer.h>
#endif

namespace {

using osp::model::clean_prompt;

TEST(PromptCleaning, WhitespaceCollapsedAndStripped) {
  EXPECT_EQ(clean_prompt("  a\t\tb \n c  "), "a b c");
  EXPECT_EQ(clean_prompt("x\r\ny\u2028z\u00a0\u00a0w"), "x y z w");
  EXPECT_EQ(clean_prompt(" \t\n "), "");
}

TEST(PromptCleaning, HtmlUnescapedTwice) {
  EXPECT_EQ(clean_prompt("fish &amp;amp; chips"), "fish & chips");
  EXPECT_EQ(clean_prompt("a &lt;b&gt; tag"), "a <b> tag");
  EXPECT_EQ(clean_prompt("caf&eacute; &#233; &#xE9;"), "caf\u00e9 \u00e9 \u00e9");
  EXPECT_EQ(clean_prompt("&#150;"), "\u2013");  // Python's cp1252 remap of &#128;-&#159;
  EXPECT_EQ(clean_prompt("a&nbsp;&nbsp;b"), "a b");
  EXPECT_EQ(clean_prompt("AT&T and &unknown;"), "AT&T and &unknown;");
}

TEST(PromptCleaning, WidthFolding) {
  EXPECT_EQ(clean_prompt("\uff21\uff22\uff23\uff0c\uff11\uff12\uff13\uff01"), "ABC,123!");
  EXPECT_EQ(clean_prompt("a\u3000b"), "a b");
  EXPECT_EQ(clean_prompt("\uff62\u6587\uff63\uff61"), "\u300c\u6587\u300d\u3002");
}

TEST(PromptCleaning, QuotesUncurledAndLigaturesSplit) {
  EXPECT_EQ(clean_prompt("\u201cHello\u201d \u2018world\u2019 it\u02bcs"), "\"Hello\" 'world' it's");
  EXPECT_EQ(clean_prompt("\ufb01ne \ufb02ow \ufb03x"), "fine flow ffix");
  // Entities that produce curly quotes are uncurled too (ftfy unescapes first).
  EXPECT_EQ(clean_prompt("&#8220;hi&#8221;"), "\"hi\"");
}

TEST(PromptCleaning, ControlCharsAndTerminalEscapesRemoved) {
  EXPECT_EQ(clean_prompt(std::string("a\x01\x7f") + "b\x1b[31mred\x1b[0m"), "abred");
  EXPECT_EQ(clean_prompt("\ufeffbom"), "bom");
  EXPECT_EQ(clean_prompt("bad \xff byte"), "bad \ufffd byte");
}

TEST(PromptCleaning, DefaultNegativePromptFoldsFullwidthCommas) {
  const std::string& neg = osp::model::default_negative_prompt();
  ASSERT_NE(neg.find("\uff0c"), std::string::npos);
  std::string want = neg;
  for (size_t p; (p = want.find("\uff0c")) != std::string::npos;) want.replace(p, 3, ",");
  EXPECT_EQ(clean_prompt(neg), want);
  EXPECT_EQ(neg.rfind("\u5012\u7740\u8d70"), neg.size() - 9);  // ends with 倒着走
}

#ifdef OSP_HAVE_SENTENCEPIECE
class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    namespace fs = std::filesystem;
    dir_ = fs::temp_directory_path() / ("osp_tok_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::mt19937 rng(7);
    const char* words[] = {"a", "cat", "dog", "runs", "on", "the", "beach", "at", "sunset",
                           "red", "car", "drives", "fast", "through", "city", "night", "hello",
                           "world", "video", "of", "\u72d7", "\u732b", "\u6d77\u6ee9", "\u65e5\u843d",
                           "\"quoted\"", "'single'", ",", "."};
    std::ofstream f(dir_ / "corpus.txt");
    for (int l = 0; l < 2000; ++l) {
      const int n = 3 + int(rng() % 10);
      for (int i = 0; i < n; ++i) f << (i ? " " : "") << words[rng() % std::size(words)];
      f << "\n";
    }
    f.close();
    const std::string prefix = (dir_ / "tiny").string();
    const auto st = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + (dir_ / "corpus.txt").string() + " --model_prefix=" + prefix +
        " --vocab_size=80 --model_type=unigram --character_coverage=1.0 --pad_id=0 --eos_id=1"
        " --unk_id=2 --bos_id=-1 --hard_vocab_limit=false --minloglevel=2 --num_threads=1");
    ASSERT_TRUE(st.ok()) << st.ToString();
    tok_ = new osp::model::Tokenizer(osp::model::Tokenizer::load(prefix + ".model"));
  }
  static void TearDownTestSuite() {
    delete tok_;
    std::filesystem::remove_all(dir_);
  }
  static inline std::filesystem::path dir_;
  static inline osp::model::Tokenizer* tok_ = nullptr;
};

TEST_F(TokenizerTest, EosAppendedAndPaddedTo512) {
  EXPECT_EQ(tok_->eos_id(), 1);
  EXPECT_EQ(tok_->pad_id(), 0);
  auto t = tok_->encode("a cat runs on the beach");
  const auto p = tok_->pieces("a cat runs on the beach");
  ASSERT_FALSE(p.empty());
  ASSERT_EQ(t.ids.size(), 512u);
  ASSERT_EQ(t.mask.size(), 512u);
  EXPECT_EQ(t.n_valid, int64_t(p.size()) + 1);
  for (size_t i = 0; i < p.size(); ++i) EXPECT_EQ(t.ids[i], p[i]);
  EXPECT_EQ(t.ids[p.size()], 1);
  for (size_t i = 0; i < 512; ++i) {
    EXPECT_EQ(t.mask[i], i < size_t(t.n_valid) ? 1 : 0);
    if (i > p.size()) EXPECT_EQ(t.ids[i], 0);
  }
  for (int32_t id : p) EXPECT_GT(id, 2);  // real pieces, not special ids
}

TEST_F(TokenizerTest, TruncatesTo511PiecesPlusEos) {
  std::string longp;
  for (int i = 0; i < 400; ++i) longp += "sunset beach dog ";
  ASSERT_GT(tok_->pieces(clean_prompt(longp)).size(), 511u);
  auto t = tok_->encode(longp);
  EXPECT_EQ(t.n_valid, 512);
  EXPECT_EQ(t.ids[511], 1);
  EXPECT_EQ(t.ids[510], tok_->pieces(clean_prompt(longp))[510]);
  auto s = tok_->encode(longp, 8);
  ASSERT_EQ(s.ids.size(), 8u);
  EXPECT_EQ(s.ids[7], 1);
  EXPECT_EQ(s.n_valid, 8);
}

TEST_F(TokenizerTest, CleaningAppliedBeforeEncoding) {
  EXPECT_EQ(tok_->encode("\uff48\uff45\uff4c\uff4c\uff4f   world").ids, tok_->encode("hello world").ids);
  EXPECT_EQ(tok_->encode("\u201cquoted\u201d \u2018single\u2019").ids,
            tok_->encode("\"quoted\" 'single'").ids);
  EXPECT_EQ(tok_->encode("  red &amp;amp; car ").ids, tok_->encode("red & car").ids);
  auto e = tok_->encode("");
  EXPECT_EQ(e.n_valid, 1);  // just </s>
  EXPECT_EQ(e.ids[0], 1);
}

TEST_F(TokenizerTest, BadInput) {
  EXPECT_THROW(tok_->encode("x", 0), osp::Error);
  EXPECT_THROW(osp::model::Tokenizer::load((dir_ / "missing.model").string()), osp::Error);
}
#endif

}  // namespace
