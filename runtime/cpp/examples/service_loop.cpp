// A minimal service loop: open a bundle once, then segment images from several worker threads with the
// same handle (glsnet handles are thread-safe). Usage: glsnet-service-example BUNDLE WORKERS IMAGES_PER_WORKER
// Each worker segments a synthetic image of its own and prints the class histogram of the mask.
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "glsnet/glsnet.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s BUNDLE WORKERS IMAGES_PER_WORKER\n", argv[0]);
    return 2;
  }
  try {
    const glsnet::Segmenter segmenter(argv[1]);  // sessions are created once and shared by every worker
    const int workers = std::atoi(argv[2]), per_worker = std::atoi(argv[3]);
    const int classes = segmenter.num_classes();
    std::mutex print;
    std::vector<std::thread> pool;
    for (int w = 0; w < workers; ++w)
      pool.emplace_back([&, w] {
        std::mt19937 rng(static_cast<unsigned>(w));
        for (int n = 0; n < per_worker; ++n) {
          const int64_t height = 200 + 37 * w, width = 300 + 11 * n;
          std::vector<uint8_t> pixels(static_cast<size_t>(height * width * 3));
          for (auto& p : pixels) p = static_cast<uint8_t>(rng());
          try {
            const auto mask = segmenter.segment(pixels.data(), height, width, 3);
            std::vector<long> histogram(classes, 0);
            for (uint8_t v : mask) ++histogram[v];
            std::lock_guard<std::mutex> lock(print);
            std::printf("worker %d image %d (%lld x %lld):", w, n, static_cast<long long>(height), static_cast<long long>(width));
            for (long count : histogram) std::printf(" %ld", count);
            std::printf("\n");
          } catch (const glsnet::Exception& e) {
            std::lock_guard<std::mutex> lock(print);
            std::fprintf(stderr, "worker %d: %s\n", w, e.what());
          }
        }
      });
    for (auto& t : pool) t.join();
    return 0;
  } catch (const glsnet::Exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
