// Progress line formats (terminal bar vs plain log lines), durations, the interrupt flag.
#include <gtest/gtest.h>

#include <cstdio>

#include "osp/core/error.h"
#include "osp/core/progress.h"

using osp::Progress;

TEST(Progress, FormatDuration) {
  EXPECT_EQ(Progress::format_duration(0), "00:00");
  EXPECT_EQ(Progress::format_duration(61.4), "01:01");
  EXPECT_EQ(Progress::format_duration(3725), "1:02:05");
  EXPECT_EQ(Progress::format_duration(-3), "00:00");
}

TEST(Progress, TerminalBarHasStepTimeAndEta) {
  Progress p("sampling", 50, /*tty=*/1, stderr);
  const std::string s = p.line(10, 20.0, 2.0);  // 10 of 50 done in 20 s → 2 s/it, ETA 80 s
  EXPECT_NE(s.find("10/50"), std::string::npos) << s;
  EXPECT_NE(s.find("2.00 s/it"), std::string::npos) << s;
  EXPECT_NE(s.find("ETA 01:20"), std::string::npos) << s;
  EXPECT_NE(s.find("[####...................."), std::string::npos) << s;  // 4.8 of 24 cells
}

TEST(Progress, PlainLinesForLogs) {
  Progress p("sampling", 4, /*tty=*/0, stderr);
  const std::string s = p.line(1, 3.0, 3.0);
  EXPECT_EQ(s.find('\r'), std::string::npos);
  EXPECT_EQ(s.find('#'), std::string::npos);
  EXPECT_NE(s.find("1/4 step 3.000 s"), std::string::npos) << s;
  EXPECT_NE(s.find("eta 9.0 s"), std::string::npos) << s;
}

TEST(Progress, RejectsEmptyTotal) { EXPECT_THROW(Progress("x", 0, 0), osp::Error); }

TEST(Progress, InterruptFlag) {
  EXPECT_FALSE(osp::interrupted());
  osp::set_interrupted(true);
  EXPECT_TRUE(osp::interrupted());
  osp::set_interrupted(false);
  EXPECT_FALSE(osp::interrupted());
}
