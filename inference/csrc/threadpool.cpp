#include "threadpool.h"

#if defined(__linux__)
#include <pthread.h>
#endif

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
constexpr int kSpinIters = 1 << 13;  // spinning before a worker sleeps (well under a millisecond)
}  // namespace

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

void ThreadPool::run_chunks(uint32_t gen, const std::function<void(int, int)>* job, int n, int n_chunks) {
  for (;;) {
    uint64_t cur = next_.load(std::memory_order_acquire);
    // A claim is valid only while the counter still belongs to this job's generation: a worker
    // that woke late cannot run an old job on a new job's indices (or the reverse).
    if (static_cast<uint32_t>(cur >> 32) != gen) return;
    const int idx = static_cast<int>(cur & 0xffffffffu);
    if (idx >= n_chunks) return;
    if (!next_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel)) continue;
    const int b = static_cast<int>(static_cast<int64_t>(n) * idx / n_chunks);
    const int e = static_cast<int>(static_cast<int64_t>(n) * (idx + 1) / n_chunks);
    if (b < e) (*job)(b, e);
    done_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::worker(int /*id*/) {
#if defined(__linux__)
  pthread_setname_np(pthread_self(), "bitnet-pool");  // what top -H and /proc/<pid>/task/*/comm show
#endif
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
    // The job fields were written before the generation was published (release/acquire); the
    // claim in run_chunks re-checks the generation, so reading a newer job here is harmless
    // (parallel_for moves the claim counter on before it writes a new job's fields).
    run_chunks(static_cast<uint32_t>(seen), job_.load(std::memory_order_acquire),
               job_n_.load(std::memory_order_acquire), job_chunks_.load(std::memory_order_acquire));
  }
}

void ThreadPool::parallel_for(int n, const std::function<void(int, int)>& fn, int chunks_per_thread) {
  if (n <= 0) return;
  if (n_threads_ == 1 || n == 1) {
    fn(0, n);
    return;
  }
  const int n_chunks = std::min(n, n_threads_ * std::max(1, chunks_per_thread));
  uint32_t gen;
  {
    std::lock_guard<std::mutex> lock(mu_);
    gen = static_cast<uint32_t>(generation_.load() + 1);
    // The claim counter moves to the new generation FIRST: a worker still on the previous
    // generation may read some of the new job's fields below, and having seen any of them it
    // sees this counter too (release/acquire), so its claim fails. Written last, a late worker
    // could claim a chunk of the new job under the old generation and count it in done_,
    // letting this call return while that chunk still ran (a crash seen under bitnet serve).
    next_.store(static_cast<uint64_t>(gen) << 32, std::memory_order_release);
    job_.store(&fn, std::memory_order_release);
    job_n_.store(n, std::memory_order_release);
    job_chunks_.store(n_chunks, std::memory_order_release);
    done_.store(0, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  cv_.notify_all();
  run_chunks(gen, &fn, n, n_chunks);
  int spins = 0;
  while (done_.load(std::memory_order_acquire) != n_chunks) {
    BITNET_PAUSE();
    if (++spins > kSpinIters) std::this_thread::yield();  // a descheduled worker holds a chunk
  }
}

}  // namespace bitnet
