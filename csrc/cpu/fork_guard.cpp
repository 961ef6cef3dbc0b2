// OpenMP after fork(). GNU libgomp (the runtime of torch's CPU wheels) keeps its pool of worker threads in
// process state, and fork() copies that state but not the threads: a child's first parallel region of more
// than one thread waits for workers that do not exist, forever. torch's own parallel ops hang there too
// unless the child calls torch.set_num_threads(1); PyTorch guards its other thread pools the same way, with
// a pthread_atfork child handler. Ours marks the child, and the kernels (segments.h) then run on the calling
// thread only: a forked child gets the same results, single-threaded, instead of a hang.
#include <pthread.h>

#include <atomic>

#include "segments.h"

namespace fastsample::cpu {
namespace {

std::atomic<bool> forked_child{false};

void mark_forked_child() { forked_child.store(true, std::memory_order_relaxed); }

// Registered when the extension is loaded, so every later fork() runs the handler.
[[maybe_unused]] const int registered = pthread_atfork(nullptr, nullptr, mark_forked_child);

}  // namespace

bool in_forked_child() { return forked_child.load(std::memory_order_relaxed); }

}  // namespace fastsample::cpu
