#include "threadpool.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define BITNET_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define BITNET_PAUSE() __asm__ volatile("yield")
#else
#define BITNET_PAUSE() ((void)0)
#endif

namespace bitnet {

namespace {
constexpr int kSpinIters = 1 << 14;  // ~tens of microseconds of spinning before sleeping
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker(int id) {
  uint64_t seen = 0;
  for (;;) {
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen && spins < kSpinIters) {
      BITNET_PAUSE();
      ++spins;
    }
    if (generation_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    const int n = job_n_;
    const int b = static_cast<int>(static_cast<int64_t>(n) * id / n_threads_);
    const int e = static_cast<int>(static_cast<int64_t>(n) * (id + 1) / n_threads_);
    if (b < e) (*job_)(b, e);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::parallel_for(int n, const std::function<void(int, int)>& fn) {
  if (n <= 0) return;
  if (n_threads_ == 1 || n == 1) {
    fn(0, n);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    job_n_ = n;
    pending_.store(n_threads_ - 1, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  cv_.notify_all();
  const int e0 = static_cast<int>(static_cast<int64_t>(n) / n_threads_);
  if (e0 > 0) fn(0, e0);
  while (pending_.load(std::memory_order_acquire) != 0) BITNET_PAUSE();
}

}  // namespace bitnet
