// XLA:CPU handlers: decode the call, then hand the data to the host window
// that lowering prepared for (call site, group).
//
// The handlers are asynchronous (they return an ffi::Future), so that a call
// whose peers have not arrived yet never holds one of XLA's threads for long:
// XLA:CPU runs independent operations concurrently and in any order, and a
// device thread blocked at a barrier could otherwise starve the very peers it
// waits for. A call arrives at its first barrier on XLA's thread and waits
// there briefly (HostConfig::patience_s, a futex wait, no spinning): peers
// usually come within that, and then the whole call runs on XLA's thread (the
// rest of it waits only on peers already inside the call). Only a call whose
// peers are later than that hands its wait to a thread of jax_symm's own
// pool, which grows whenever no thread is idle, so a waiting call can always
// be served. The hand-off costs about 50-150 us on a busy 2-core machine
// (a queue, a wake-up, and XLA resuming the device's program on the pool
// thread), which is why it is the exception. Calls pair by call site,
// whatever order the devices meet them in, and no order between calls is
// needed.
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "ffi_call.h"
#include "host_collectives.h"
#include "host_window.h"

namespace jax_symm {

// The host handler's attributes (jax_symm/_host.py `lower` emits them).
struct HostCallAttrs {
  CallAttrs call;
  int64_t site;  // the call site's identity (a digest made at lowering); names the window
  HostCallAttrs(Int64Span groups, int64_t group_size, int64_t site, int64_t chunk_bytes)
      : call{groups, group_size, chunk_bytes}, site(site) {}
};

}  // namespace jax_symm

// XLA decodes the attributes dictionary into the struct, by name.
XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(
    ::jax_symm::HostCallAttrs,
    ::xla::ffi::StructMember<::jax_symm::Int64Span>("groups"),
    ::xla::ffi::StructMember<int64_t>("group_size"),
    ::xla::ffi::StructMember<int64_t>("site"),
    ::xla::ffi::StructMember<int64_t>("chunk_bytes"));

namespace jax_symm {
namespace {

// Threads that wait for peers on behalf of calls. It keeps as many threads
// as were ever busy at once, and is never destroyed (a call may still be
// waiting while the interpreter exits).
class WaitPool {
 public:
  static WaitPool& Get() {
    static auto* pool = new WaitPool();
    return *pool;
  }

  void Run(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      // Every queued task needs a thread of its own that is free to take it:
      // a waiting task must never sit behind another that waits for it.
      if (tasks_.size() < waiting_) {
        tasks_.push_back(std::move(task));
        ready_.notify_one();
        return;
      }
    }
    auto first = std::make_shared<std::function<void()>>(std::move(task));
    try {
      std::thread([this, first] {
        (*first)();
        *first = nullptr;
        Work();
      }).detach();
    } catch (const std::system_error&) {
      // No thread to be had: wait here, on XLA's thread. The barrier's
      // timeout still ends the call with an error if that starves a peer.
      (*first)();
    }
  }

 private:
  void Work() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      while (tasks_.empty()) {
        ++waiting_;
        ready_.wait(lock);
        --waiting_;
      }
      std::function<void()> task = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      task();  // also runs the rest of the device's program, until its next wait
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> tasks_;
  size_t waiting_ = 0;  // threads blocked in ready_.wait
};

// One call's data, kept until the call completes (XLA keeps the buffers
// alive until the future is ready).
struct HostCall {
  CollectiveKind kind;
  HostWindow* window;
  CallLayout layout;
  int64_t run_id;
  ffi::DataType dtype;
  const void* in;
  void* out;

  // Runs the call as `meeting` asks; with meeting.pending set on return, the
  // rank stays busy until the resumed call (Finish) is done.
  Error Start(Meeting& meeting) const {
    if (!window->Enter(layout.rank)) {
      return Internal("one call site of group " + GroupToString(window->members()) +
                      " was entered twice at once by rank " + std::to_string(layout.rank) +
                      ": one lowered program runs the same jax_symm call concurrently "
                      "(from several threads, or one cached function called at independent "
                      "points); run such programs from one thread at a time");
    }
    Error err = Exchange(meeting);
    if (!meeting.pending) window->Leave(layout.rank);
    return err;
  }

  Error Finish() const {
    Meeting meeting;
    meeting.resume = true;
    Error err = Exchange(meeting);
    window->Leave(layout.rank);
    return err;
  }

  Error Exchange(Meeting& meeting) const {
    switch (kind) {
      case CollectiveKind::kAllGather:
        return window->AllGather(layout, run_id, in, out, meeting);
      case CollectiveKind::kReduceScatter:
        return window->ReduceScatter(layout, run_id, dtype, in, out, meeting);
      case CollectiveKind::kAllReduce:
        return window->AllReduce(layout, run_id, dtype, in, out, meeting);
      case CollectiveKind::kAllToAll:
        return window->AllToAll(layout, run_id, in, out, meeting);
    }
    return Internal("unknown collective kind");
  }
};

ffi::Future Done(const Error& err) {
  ffi::Promise promise;
  ffi::Future future(promise);
  if (err.failure()) {
    promise.SetError(err);
  } else {
    promise.SetAvailable();
  }
  return future;
}

// The window checks the data against the slot lowering sized it with.
ffi::Future HostCollective(CollectiveKind kind, int64_t run_id, int32_t ordinal,
                           const AnyBuffer& in, AnyBuffer& out, const HostCallAttrs& attrs) {
  ErrorOr<CallSite> site = ResolveCall(Platform::kHost, ordinal, kind, attrs.call, in, out);
  if (site.has_error()) return Done(site.error());
  const CallLayout& layout = site->layout;
  if (layout.world == 1) {  // nothing to exchange
    std::memcpy(out.untyped_data(), in.untyped_data(), in.size_bytes());
    return Done(Error::Success());
  }
  ErrorOr<HostWindow*> window = HostWindow::Find(attrs.site, site->group.members);
  if (window.has_error()) return Done(window.error());
  const HostCall call{kind, *window, layout, run_id, in.element_type(),
                      in.untyped_data(), out.untyped_data()};
  Meeting meeting;
  meeting.patience_s = (*window)->patience_s();
  Error started = call.Start(meeting);
  if (!meeting.pending) return Done(started);
  ffi::Promise promise;
  ffi::Future future(promise);
  WaitPool::Get().Run([call, promise]() mutable {
    Error err = call.Finish();
    if (err.failure()) {
      promise.SetError(std::move(err));
    } else {
      promise.SetAvailable();
    }
  });
  return future;
}

template <CollectiveKind kKind>
ffi::Future HostHandler(ffi::RunId run, int32_t ordinal, AnyBuffer in,
                        ffi::Result<AnyBuffer> out, HostCallAttrs attrs) {
  return HostCollective(kKind, run.run_id, ordinal, in, *out, attrs);
}

}  // namespace

// One per custom call of a compiled executable (XLA makes it at the
// instantiate stage and destroys it with the executable): holds the call
// site's windows, so that they live exactly as long as some executable that
// uses them.
struct HostCallState {
  static ffi::TypeId id;
  std::vector<std::pair<int64_t, std::vector<int64_t>>> windows;
  ~HostCallState() {
    for (const auto& [site, members] : windows) HostWindow::Release(site, members);
  }
};
ffi::TypeId HostCallState::id = {};
ffi::TypeInfo host_call_state_info = ffi::MakeTypeInfo<HostCallState>();

namespace {

ffi::ErrorOr<std::unique_ptr<HostCallState>> HostInstantiate(HostCallAttrs attrs) {
  auto state = std::make_unique<HostCallState>();
  const int64_t size = attrs.call.group_size;
  if (size < 2) return state;  // groups of one have no window
  const auto& groups = attrs.call.groups;
  for (size_t at = 0; at + size <= groups.size(); at += size) {
    std::vector<int64_t> members(groups.begin() + at, groups.begin() + at + size);
    // Groups without a device of this process have no window here.
    if (HostWindow::Acquire(attrs.site, members)) {
      state->windows.emplace_back(attrs.site, std::move(members));
    }
  }
  return state;
}

auto BindHostCall() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::RunId>()
      .Ctx<ffi::DeviceOrdinal>()
      .Arg<AnyBuffer>()
      .Ret<AnyBuffer>()
      .Attrs<HostCallAttrs>();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HostCallInstantiate, HostInstantiate,
                              ffi::Ffi::BindInstantiate().Attrs<HostCallAttrs>());
// Host<Name> for each row of the table of kinds (ffi_kinds.h).
#define JAX_SYMM_DEFINE_HOST_HANDLER(Name, ...)                                     \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(Host##Name, HostHandler<CollectiveKind::k##Name>, \
                                BindHostCall());
JAX_SYMM_COLLECTIVE_KINDS(JAX_SYMM_DEFINE_HOST_HANDLER)
#undef JAX_SYMM_DEFINE_HOST_HANDLER

XLA_FFI_TypeId* HostCallStateTypeId() { return &HostCallState::id; }
const XLA_FFI_TypeInfo* HostCallStateTypeInfo() { return &host_call_state_info; }

}  // namespace jax_symm
