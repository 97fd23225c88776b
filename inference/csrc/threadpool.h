// A small fork-join thread pool. parallel_for splits [0, n) into a few contiguous chunks per thread
// that the caller and the workers claim dynamically, so a worker the OS has descheduled (a busy
// shared machine) delays nothing: the others take its chunks. Workers spin briefly between jobs
// (a decoded token issues a few hundred jobs), then sleep on a condition variable.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace bitnet {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  // Jobs handed to the workers so far (fork/joins; a parallel_for that runs inline is not one).
  uint64_t jobs() const { return generation_.load(std::memory_order_relaxed); }
  // fn(begin, end) over contiguous chunks of [0, n), chunks_per_thread per thread, claimed in
  // order; returns when all are done. One chunk per thread gives each thread a single sequential
  // stream (best for the memory-bound one-token products); more chunks balance uneven work.
  void parallel_for(int n, const std::function<void(int, int)>& fn, int chunks_per_thread = 4);

 private:
  void worker(int id);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  // Claims chunks of the current job; returns when none is left.
  void run_chunks(uint32_t gen, const std::function<void(int, int)>* job, int n, int n_chunks);

  std::atomic<uint64_t> generation_{0};
  // (generation << 32) | next chunk index: a claim succeeds only within the job it was meant for.
  std::atomic<uint64_t> next_{0};
  std::atomic<int> done_{0};
  std::atomic<bool> stop_{false};
  std::atomic<const std::function<void(int, int)>*> job_{nullptr};
  std::atomic<int> job_n_{0}, job_chunks_{0};
};

}  // namespace bitnet
