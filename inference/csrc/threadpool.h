// A small fork-join thread pool: parallel_for splits [0, n) into one contiguous chunk per thread
// (static partition: decode is memory-bound and every chunk costs the same), the caller runs
// chunk 0. Workers spin briefly between jobs (a decoded token issues a few hundred jobs), then
// sleep on a condition variable so an idle engine costs no CPU.
#pragma once

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
  // fn(begin, end) for one contiguous chunk per thread; returns when all chunks are done.
  void parallel_for(int n, const std::function<void(int, int)>& fn);

 private:
  void worker(int id);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  const std::function<void(int, int)>* job_ = nullptr;
  int job_n_ = 0;
};

}  // namespace bitnet
