// Ctrl-C safe points (core/interrupt.h): interruption_point throws once the flag is set, and not
// while a DeferInterrupts scope lives (the flag stays readable; nested scopes count).
#include <gtest/gtest.h>

#include "osp/core/interrupt.h"

using namespace osp;

TEST(Interrupt, SafePointThrowsOnlyOutsideDeferScopes) {
  set_interrupted(false);
  EXPECT_NO_THROW(interruption_point("sampling"));
  set_interrupted(true);
  try {
    interruption_point("sampling");
    ADD_FAILURE() << "expected Interrupted";
  } catch (const Interrupted& e) {
    EXPECT_EQ(e.stage(), "sampling");
  }
  {
    DeferInterrupts outer;
    {
      DeferInterrupts inner;
      EXPECT_NO_THROW(interruption_point("RL rollout"));
    }
    EXPECT_NO_THROW(interruption_point("RL rollout"));  // the outer scope still defers
    EXPECT_TRUE(interrupted());
  }
  EXPECT_THROW(interruption_point("RL rollout"), Interrupted);
  set_interrupted(false);
}
