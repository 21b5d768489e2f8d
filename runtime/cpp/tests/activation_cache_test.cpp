// ActivationCache (src/activation_cache.hpp): freed large blocks serve later requests without new pages (a smaller
// one keeps its tail resident, a larger one grows the largest kept block), resident bytes never pass the live
// high-water mark plus kAllowance (kept blocks are unmapped, then live tails given back), unmap_kept leaves only what
// is live, small requests go to malloc, and threads may share it. Registered with CTest.
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
  return c.resident_bytes <= c.high_water_bytes + glsnet::ActivationCache::kAllowance && c.live_bytes <= c.high_water_bytes;
}

static unsigned char byte_at(void* p, size_t offset) { return static_cast<unsigned char*>(p)[offset]; }

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
    expect("a reused block keeps its writes (nothing zeroes it)", byte_at(b, 12345) == 7);
    cache.release(b);

    void* c = cache.allocate(MiB);
    expect("a larger block serves a smaller request", c == a && cache.counts().reused_blocks == 2);
    expect("and keeps its tail resident while the bound allows",
           cache.counts().live_bytes == MiB && cache.counts().resident_bytes == 5 * MiB && bounded(cache));
    std::memset(c, 3, MiB);
    cache.release(c);
    void* e = cache.allocate(5 * MiB);
    expect("served again for the larger request, it needs no new pages", e == a && cache.counts().fresh_bytes == 5 * MiB);
    expect("the pages it kept keep their contents", byte_at(e, 100) == 3 && byte_at(e, 4 * MiB) == 7);
    cache.release(e);
  }
  {
    ActivationCache cache;
    void* x = cache.allocate(64 * MiB);
    cache.release(x);
    void* y = cache.allocate(16 * MiB);
    expect("a smaller request keeps the block's tail", y == x && cache.counts().resident_bytes == 64 * MiB);
    void* z = cache.allocate(64 * MiB);
    const auto after_z = cache.counts();
    expect("pages past the bound take back the tails of live blocks",
           after_z.resident_bytes == 80 * MiB && after_z.live_bytes == 80 * MiB && after_z.fresh_bytes == 128 * MiB && bounded(cache));
    std::memset(z, 5, 64 * MiB);
    cache.release(y);
    cache.release(z);
    void* w = cache.allocate(96 * MiB);
    const auto after_w = cache.counts();
    expect("a request larger than every kept block grows the largest", after_w.reused_blocks == 2 && after_w.fresh_bytes == 160 * MiB);
    expect("a grown block keeps its pages", byte_at(w, 0) == 5 && byte_at(w, 64 * MiB - 1) == 5);
    expect("kept blocks within the bound stay kept", after_w.kept_bytes == 16 * MiB && after_w.resident_bytes == 112 * MiB && bounded(cache));
    std::memset(w, 6, 96 * MiB);
    cache.release(w);
    cache.unmap_kept();
    expect("unmap_kept leaves nothing kept or resident", cache.counts().kept_bytes == 0 && cache.counts().resident_bytes == 0);
    void* v = cache.allocate(6 * MiB);
    expect("after unmap_kept a request maps afresh", v != nullptr && cache.counts().fresh_bytes == 166 * MiB);
    cache.release(v);
  }
  {
    ActivationCache cache;
    void* big = cache.allocate(64 * MiB);
    std::memset(big, 4, 64 * MiB);
    cache.release(big);
    void* live = cache.allocate(8 * MiB);
    expect("a live block holds its tail", live == big && cache.counts().resident_bytes == 64 * MiB);
    cache.unmap_kept();
    expect("unmap_kept gives back the unused tails of live blocks",
           cache.counts().resident_bytes == 8 * MiB && cache.counts().live_bytes == 8 * MiB);
    expect("and leaves their requests' pages alone", byte_at(live, 8 * MiB - 1) == 4);
    cache.release(live);
  }
  {
    ActivationCache cache;
    void* a = cache.allocate(40 * MiB);
    void* b = cache.allocate(40 * MiB);
    expect("the high-water mark follows the live bytes", cache.counts().high_water_bytes == 80 * MiB);
    cache.release(a);
    cache.release(b);
    void* c = cache.allocate(200 * MiB);
    const auto after = cache.counts();
    expect("a much larger request grows one kept block and unmaps those that no longer fit",
           after.kept_bytes == 0 && after.resident_bytes == 200 * MiB && after.fresh_bytes == 240 * MiB && bounded(cache));
    expect("and raises the mark to the new live bytes", after.high_water_bytes == 200 * MiB);
    cache.release(c);
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
