// ActivationCache (src/activation_cache.hpp): freed large blocks serve later requests without new pages, only the
// pages a request covers stay resident, live + kept bytes never pass the live high-water mark, small requests go to
// malloc, and threads may share it. Registered with CTest.
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "activation_cache.hpp"

static int failures = 0;

static void expect(const char* what, bool ok) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what);
  if (!ok) ++failures;
}

static constexpr size_t MiB = size_t{1} << 20;

static bool bounded(const glsnet::ActivationCache& cache) {
  const auto c = cache.counts();
  return c.live_bytes + c.kept_bytes <= c.high_water_bytes;
}

int main() {
  using glsnet::ActivationCache;
  {
    ActivationCache cache;
    void* small = cache.allocate(1000);
    expect("a small request is served", small != nullptr);
    std::memset(small, 1, 1000);
    expect("a small request is not counted as a block", cache.counts().live_bytes == 0 && cache.counts().fresh_bytes == 0);
    cache.release(small);
    expect("a released small request is not kept", cache.counts().kept_bytes == 0);

    void* a = cache.allocate(5 * MiB - 5);
    expect("a large request is mapped in whole pages", cache.counts().live_bytes == 5 * MiB && cache.counts().fresh_bytes == 5 * MiB);
    std::memset(a, 7, 5 * MiB - 5);
    cache.release(a);
    expect("a released block is kept", cache.counts().kept_bytes == 5 * MiB && cache.counts().live_bytes == 0);
    void* b = cache.allocate(5 * MiB);
    expect("the same size reuses the kept block, with no new pages",
           b == a && cache.counts().reused_blocks == 1 && cache.counts().fresh_bytes == 5 * MiB);
    expect("a reused block keeps its writes (nothing zeroes it)", static_cast<unsigned char*>(b)[12345] == 7);
    cache.release(b);

    void* c = cache.allocate(3 * MiB);
    expect("a block up to twice the request serves it", c == a && cache.counts().reused_blocks == 2);
    expect("and keeps only the request's pages resident", cache.counts().live_bytes == 3 * MiB && cache.counts().fresh_bytes == 5 * MiB);
    std::memset(c, 3, 3 * MiB);
    cache.release(c);
    void* e = cache.allocate(5 * MiB);
    expect("served again for a larger request, it faults in only the difference",
           e == a && cache.counts().live_bytes == 5 * MiB && cache.counts().fresh_bytes == 7 * MiB);
    expect("the pages it kept keep their contents", static_cast<unsigned char*>(e)[100] == 3);
    std::memset(e, 9, 5 * MiB);
    cache.release(e);

    void* d = cache.allocate(MiB);
    expect("a block over twice the request does not serve it",
           d != nullptr && cache.counts().reused_blocks == 3 && cache.counts().fresh_bytes == 8 * MiB);
    expect("mapping a new block unmaps kept ones past the high-water mark", bounded(cache) && cache.counts().kept_bytes == 0);
    cache.release(d);
  }
  {
    ActivationCache cache;
    void* x = cache.allocate(8 * MiB);
    void* y = cache.allocate(8 * MiB);
    expect("the high-water mark follows the live bytes", cache.counts().high_water_bytes == 16 * MiB);
    cache.release(x);
    cache.release(y);
    void* z = cache.allocate(20 * MiB);
    const auto after = cache.counts();
    expect("a larger request unmaps every kept block that no longer fits", after.kept_bytes == 0 && after.live_bytes == 20 * MiB);
    expect("and raises the mark to the new live bytes", after.high_water_bytes == 20 * MiB);
    cache.release(z);
    void* w = cache.allocate(6 * MiB);
    expect("a smaller block is mapped afresh when the kept one is over twice its size",
           w != nullptr && cache.counts().fresh_bytes == 42 * MiB && cache.counts().reused_blocks == 0 && bounded(cache));
    cache.release(w);
    cache.unmap_kept();
    expect("unmap_kept leaves nothing kept", cache.counts().kept_bytes == 0 && cache.counts().live_bytes == 0);
    void* v = cache.allocate(6 * MiB);
    expect("after unmap_kept a request maps afresh", v != nullptr && cache.counts().reused_blocks == 0);
    cache.release(v);
  }
  {
    ActivationCache cache;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&cache] {
        for (int i = 0; i < 200; ++i) {
          const size_t size = 3 * MiB + 100;
          auto* p = static_cast<unsigned char*>(cache.allocate(size));
          p[0] = p[size - 1] = static_cast<unsigned char>(i);
          cache.release(p);
        }
      });
    for (auto& thread : threads) thread.join();
    const auto c = cache.counts();
    expect("threads sharing the cache leave nothing live and stay bounded", c.live_bytes == 0 && bounded(cache));
    expect("a new block is mapped only when every block is in use: at most one per thread", c.reused_blocks >= 800 - 4);
  }
  std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
