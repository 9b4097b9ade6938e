// Fuzz target: the restricted unpickler alone (io::pickle::unpickle on raw data.pkl bytes), with
// small limits so hostile counts hit them quickly; every object is described.
#include "fuzz/fuzz_target.h"
#include "osp/io/pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  osp::fuzz::expect_only_osp_errors([&] {
    osp::io::pickle::Limits lim;
    lim.max_stack = 1 << 12;
    lim.max_memo = 1 << 12;
    lim.max_string = 1 << 16;
    lim.max_objects = 1 << 14;
    const auto r = osp::io::pickle::unpickle(data, size, "fuzz.pkl", lim);
    volatile size_t sink = 0;
    for (int i = 0; i < int(r.objects.size()); ++i) sink = sink + osp::io::pickle::describe(r, i).size();
  });
  return 0;
}
