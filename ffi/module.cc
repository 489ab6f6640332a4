// The Python extension `jax_symm._jax_symm`: FFI handler capsules and the
// set-up calls that lowering makes outside any handler.
#include <iterator>
#include <stdexcept>
#include <utility>

#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "ffi_devices.h"
#include "host_collectives.h"
#include "host_liveness.h"
#include "host_reduce.h"
#include "host_window.h"
#include "nccl_api.h"
#include "nccl_collectives.h"
#include "nccl_comms.h"
#include "nccl_timer.h"
#include "nccl_types.h"
#include "nccl_versions.h"
#include "nccl_xla_collectives.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

template <typename Fn>
nb::capsule Capsule(Fn* fn) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, Fn, XLA_FFI_CallFrame*>,
                "not an XLA FFI handler");
  return nb::capsule(reinterpret_cast<void*>(fn));
}

// Set-up calls raise RuntimeError with the library's own message.
void Raise(const jax_symm::Error& err) {
  if (err.failure()) throw std::runtime_error(err.message());
}

// The Python callable the NCCL watchdog tells of each aborted communicator.
// Never freed: the watchdog thread may hold a reference during exit.
nb::object* abort_callback = new nb::object();

void NotifyPython(const std::string& message) {
  nb::gil_scoped_acquire gil;
  if (!abort_callback->is_valid() || abort_callback->is_none()) return;
  try {
    (*abort_callback)(message);
  } catch (nb::python_error& e) {
    e.discard_as_unraisable("jax_symm NCCL abort callback");
  }
}

template <typename T>
T Value(jax_symm::ErrorOr<T> v) {
  if (v.has_error()) throw std::runtime_error(v.error().message());
  return std::move(*v);
}

using Handler = XLA_FFI_Error*(XLA_FFI_CallFrame*);

// Each kind's handlers, one entry per row of the table of kinds
// (ffi_kinds.h), in its order: a row without its handlers fails to compile.
struct KindHandlers {
  Handler* host;
  Handler* nccl;
  Handler* nccl_xla_prepare;
  Handler* nccl_xla_execute;
  Handler* nccl_xla_captured;
};
constexpr KindHandlers kKindHandlers[] = {
#define JAX_SYMM_KIND_HANDLERS(Name, ...)                                              \
  {jax_symm::Host##Name, jax_symm::Nccl##Name, jax_symm::NcclXla##Name##Prepare, \
   jax_symm::NcclXla##Name, jax_symm::NcclXla##Name##Captured},
    JAX_SYMM_COLLECTIVE_KINDS(JAX_SYMM_KIND_HANDLERS)
#undef JAX_SYMM_KIND_HANDLERS
};
static_assert(std::size(kKindHandlers) == jax_symm::kNumKinds);

// {op: (FFI target name, handler capsule)} for one transport's `handler`.
// The names are made here, next to the handlers they name; Python registers
// what it gets and emits custom calls with these names.
nb::dict Targets(const std::string& prefix, Handler* KindHandlers::*handler) {
  nb::dict d;
  for (size_t i = 0; i < jax_symm::kNumKinds; ++i) {
    const char* op = jax_symm::kKindRows[i].name;
    d[op] = nb::make_tuple(prefix + op, Capsule(kKindHandlers[i].*handler));
  }
  return d;
}

}  // namespace

NB_MODULE(_jax_symm, m) {
  m.doc() = "jax_symm native core: FFI handlers and transport set-up.";

  m.def("build_info", []() {
    nb::dict d;
    d["ffi_headers"] = JAX_SYMM_FFI_HEADERS_FROM;
    d["ffi_api"] = nb::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
    return d;
  }, "{'ffi_headers': the jaxlib whose XLA FFI headers the handlers were built "
     "against, 'ffi_api': (major, minor) of that FFI API}: XLA refuses handlers "
     "newer than itself.");
  m.def("collective_kinds", []() {
    nb::list out;
    for (const jax_symm::KindRow& row : jax_symm::kKindRows) out.append(row.name);
    return nb::tuple(out);
  }, "The collectives the handlers implement, by the names every other call uses.");
  m.def("collective_layouts", []() {
    nb::dict d;
    for (const jax_symm::KindRow& row : jax_symm::kKindRows) {
      d[row.name] = nb::make_tuple(jax_symm::ChunksName(row.layout.in),
                                   jax_symm::ChunksName(row.layout.out));
    }
    return d;
  }, "{kind: (chunks in, chunks out)}, each 'one' or 'world', as the handlers check buffers.");
  m.def("collective_sums", []() {
    nb::dict d;
    for (const jax_symm::KindRow& row : jax_symm::kKindRows) d[row.name] = row.sums;
    return d;
  }, "{kind: whether it sums}: the NCCL handlers ask a sum's dtype for an NCCL type and "
     "move the others' bytes whatever their dtype.");
  m.def("host_sum_dtypes", []() {
    nb::list out;
    for (const std::string& name : jax_symm::host_reduce::SummableTypeNames()) out.append(name);
    return nb::tuple(out);
  }, "numpy names of the element types the host transport sums.");
  m.def("nccl_sum_dtypes", []() {
    nb::list out;
    for (const std::string& name : jax_symm::NcclSummableTypeNames()) out.append(name);
    return nb::tuple(out);
  }, "numpy names of the element types the NCCL transport sums.");
  m.def("host_targets", []() {
    return Targets("jax_symm_host_", &KindHandlers::host);
  }, "{op: (FFI target name, handler capsule)} of the host transport (XLA:CPU).");
  m.def("nccl_targets", []() {
    return Targets("jax_symm_nccl_", &KindHandlers::nccl);
  }, "{op: (FFI target name, handler capsule)} of the NCCL transport (XLA:GPU).");
  m.def("nccl_version_floors", []() {
    nb::dict d;
    for (const jax_symm::NcclVersionFloor& floor : jax_symm::kNcclVersionFloors) {
      d[floor.name] = floor.version;
    }
    d["win_coll_symmetric"] = jax_symm::kNcclWinCollSymmetric;
    return d;
  }, "NCCL versions (ncclGetVersion codes) where what jax_symm does changes "
     "(nccl_versions.h: 'symmetric_windows', 'all_to_all' (ncclAlltoAll), 'half_window' "
     "(from it only the all-gather's receive and the reduce-scatter's send buffer need a "
     "window), 'multi_node_symmetric' (symmetric kernels over several NCCL hosts), "
     "'pdl_fixed' (from it NCCL's kernels wait for their input's producer)), and "
     "NCCL_WIN_COLL_SYMMETRIC.");
  m.def("nccl_xla_targets", [](bool captured) {
    const std::string prefix = captured ? "jax_symm_nccl_xla_captured_" : "jax_symm_nccl_xla_";
    nb::dict d;
    for (size_t i = 0; i < jax_symm::kNumKinds; ++i) {
      const KindHandlers& h = kKindHandlers[i];
      const char* op = jax_symm::kKindRows[i].name;
      nb::dict by_stage;
      by_stage["prepare"] = Capsule(h.nccl_xla_prepare);
      by_stage["execute"] = Capsule(captured ? h.nccl_xla_captured : h.nccl_xla_execute);
      d[op] = nb::make_tuple(prefix + op, by_stage);
    }
    return d;
  }, "captured"_a, "{op: (FFI target name, {stage: handler capsule})} of the NCCL transport's "
     "XLA path (XLA's communicator and collective memory); `captured`: the execute stage "
     "is command-buffer compatible (captured into CUDA graphs).");

  m.def(
      "set_local_devices",
      [](const std::string& platform, const std::vector<int64_t>& ordinals,
         const std::vector<int64_t>& global_ids) {
        jax_symm::SetLocalDevices(
            platform == "cpu" ? jax_symm::Platform::kHost : jax_symm::Platform::kCuda,
            ordinals, global_ids);
      },
      nb::arg("platform"), nb::arg("ordinals"), nb::arg("global_ids"),
      "Tells handlers which global device id each XLA device ordinal is.");

  m.def(
      "set_host_config",
      [](double timeout_s, double poll_s, double open_timeout_s, bool single_process,
         int spins, double patience_s, double diagnose_after_s) {
        Raise(jax_symm::SetHostConfig({timeout_s, poll_s, open_timeout_s, single_process, spins,
                                       patience_s, diagnose_after_s}));
      },
      nb::arg("timeout_s"), nb::arg("poll_s"), nb::arg("open_timeout_s"),
      nb::arg("single_process"), nb::arg("spins"),
      nb::arg("patience_s") = jax_symm::HostConfig{}.patience_s,
      nb::arg("diagnose_after_s") = jax_symm::HostConfig{}.diagnose_after_s);
  m.def(
      "host_prepare",
      [](int64_t site, const std::string& kind, std::vector<int64_t> members,
         size_t slot_bytes, uint64_t fingerprint, std::string name, bool create,
         std::vector<int64_t> local_ranks, uint64_t generation, double wait_s) -> std::string {
        jax_symm::WindowSpec spec;
        spec.generation = generation;
        spec.site = site;
        spec.kind = Value(jax_symm::CollectiveKindByName(kind));
        spec.members = std::move(members);
        spec.slot_bytes = slot_bytes;
        spec.fingerprint = fingerprint;
        spec.name = std::move(name);
        spec.create = create;
        spec.local_ranks = std::move(local_ranks);
        spec.wait_s = wait_s;
        jax_symm::Error err = jax_symm::Error::Success();
        {
          nb::gil_scoped_release release;  // may wait for a peer process to create it
          err = jax_symm::HostWindow::Prepare(spec);
        }
        // A wait in slices (wait_s >= 0) that ran out says so in its result.
        if (wait_s >= 0 && err.errc() == jax_symm::ErrorCode::kDeadlineExceeded) {
          return err.message();
        }
        Raise(err);
        return "";
      },
      nb::arg("site"), nb::arg("kind"), nb::arg("members"), nb::arg("slot_bytes"),
      nb::arg("fingerprint"), nb::arg("name"), nb::arg("create"), nb::arg("local_ranks"),
      nb::arg("generation") = 1, nb::arg("wait_s") = -1.0,
      "Creates (or opens and validates) a call site's window and claims our ranks in it. "
      "Returns ''; with wait_s >= 0, an opener that waited that long for the window "
      "returns why instead of raising, and may call again.");
  m.def(
      "host_long_waits",
      [](double recheck_s) -> nb::object {
        std::vector<jax_symm::LongWait> waits;
        bool running;
        {
          nb::gil_scoped_release release;
          running = jax_symm::NextLongWaits(recheck_s, &waits);
        }
        if (!running) return nb::none();
        nb::list out;
        for (const auto& w : waits) out.append(nb::make_tuple(w.site, w.members));
        return out;
      },
      nb::arg("recheck_s"),
      "Blocks until some CPU barrier has waited longer than diagnose_after_s (and the list "
      "changed, or recheck_s passed); returns [(site, members)] of those waiting now, or "
      "None once host_stop_long_waits ran.");
  m.def("host_stop_long_waits", &jax_symm::StopLongWaits,
        "Ends host_long_waits (at exit).");
  m.def("host_fail_window", &jax_symm::HostWindow::Fail, nb::arg("site"), nb::arg("members"),
        nb::arg("why"),
        "Marks the window of (site, group) failed with why: its waiters in every process "
        "stop with it. False where this process has no such window.");
  m.def("host_window_generation", &jax_symm::HostWindow::Generation, nb::arg("site"),
        nb::arg("members"),
        "The generation the window of (site, group) has, or would have if made now.");
  m.def("host_call_stages", []() {
    nb::dict d;
    d["instantiate"] = Capsule(jax_symm::HostCallInstantiate);
    d["type_id"] = nb::capsule(reinterpret_cast<void*>(jax_symm::HostCallStateTypeId()));
    d["type_info"] = nb::capsule(
        const_cast<void*>(reinterpret_cast<const void*>(jax_symm::HostCallStateTypeInfo())));
    return d;
  }, "The host handlers' instantiate stage (it ties windows to executables) and its "
     "state type: {'instantiate', 'type_id', 'type_info'} capsules.");
  m.def(
      "host_join",
      [](const std::string& name, int64_t process, int64_t num_processes, bool create,
         double timeout_s) {
        nb::gil_scoped_release release;  // may wait for process 0 to create it
        Raise(jax_symm::JoinJob(name, process, num_processes, create, timeout_s));
      },
      nb::arg("name"), nb::arg("process"), nb::arg("num_processes"), nb::arg("create"),
      nb::arg("timeout_s"),
      "Creates (process 0) or opens the job's liveness record and claims this process in it.");
  m.def("host_set_device_processes", &jax_symm::SetDeviceProcesses, nb::arg("device_ids"),
        nb::arg("processes"), "Which process serves each global device.");
  m.def("host_leave", &jax_symm::LeaveJob, nb::arg("why"),
        "Marks this process as leaving the job, with why, for its peers to read.");
  m.def("host_process_gone", &jax_symm::ProcessGone, nb::arg("process"),
        "Why that process no longer takes part in the job, or '' while it may.");
  m.def("host_reap_stale", &jax_symm::ReapStaleSegments,
        "Unlinks this user's jax_symm segments in /dev/shm that no live process holds.");

  m.def("host_windows", &jax_symm::HostWindow::List,
        "(name, bytes) of each shared-memory window this process mapped.");
  m.def("host_unlink_all", &jax_symm::HostWindow::UnlinkAll,
        "Unlinks this process's shared-memory windows (mappings stay valid).");

  m.def(
      "nccl_load",
      [](const std::string& hint) {
        const jax_symm::NcclApi* api = Value(jax_symm::LoadNcclApi(hint));
        nb::dict d;
        d["version"] = api->nccl_version;
        d["path"] = api->nccl_path;
        d["symmetric_windows"] = api->symmetric_windows();
        d["gather_sends_in_place"] = api->gather_sends_in_place();
        d["pdl_fixed_version"] = jax_symm::kPdlFixedVersion;
        d["revoke"] = api->ncclCommRevoke != nullptr;
        // What serves jax_symm.all_to_all (nccl_enqueue.h EnqueueAllToAll).
        d["all_to_all"] = jax_symm::AllToAllServer(*api);
        return d;
      },
      nb::arg("nccl_hint"),
      "Resolves the CUDA driver and the libnccl.so.2 JAX loaded (else `nccl_hint`).");

  m.def(
      "nccl_copy_rules",
      [](int version) {
        nb::dict d;
        d["gather_sends_in_place"] = jax_symm::GatherSendsInPlace(version);
        d["scatter_receives_in_place"] = jax_symm::ScatterReceivesInPlace(version);
        return d;
      },
      nb::arg("version"),
      "Which window copies the handlers skip under NCCL `version` (e.g. 22809); "
      "needs no GPU.");

  m.def("nccl_set_stall_timeout", [](double seconds) { Raise(jax_symm::NcclSetStallTimeout(seconds)); }, nb::arg("seconds"),
        "The longest a collective may make no progress before the watchdog aborts its "
        "communicator (0: no bound).");

  m.def("nccl_set_all_to_all_send_recv", &jax_symm::SetAllToAllBySendRecv, nb::arg("on"),
        "Whether grouped ncclSend/ncclRecv serve the all-to-all even where the loaded "
        "NCCL has ncclAlltoAll (JAX_SYMM_NCCL_ALL_TO_ALL=send_recv).");

  m.def("nccl_unique_id", []() {
    std::string id = Value(jax_symm::NcclNewUniqueId());
    return nb::bytes(id.data(), id.size());
  });

  m.def(
      "nccl_init_group",
      [](std::vector<int64_t> members, std::vector<std::tuple<int64_t, int, int>> local,
         nb::bytes unique_id) {
        std::vector<jax_symm::LocalRankSpec> specs;
        for (auto& [gid, ordinal, rank] : local) specs.push_back({gid, ordinal, rank});
        std::string id(unique_id.c_str(), unique_id.size());
        nb::gil_scoped_release release;  // peers in other processes may need ours
        Raise(jax_symm::NcclInitGroup(members, specs, id));
      },
      nb::arg("members"), nb::arg("local"), nb::arg("unique_id"),
      "Creates this process's ranks (global id, CUDA ordinal, rank) of a group.");

  m.def(
      "nccl_ensure_arena",
      [](std::vector<int64_t> members, size_t bytes, size_t min_bytes) {
        nb::gil_scoped_release release;
        return Value(jax_symm::NcclEnsureArena(members, bytes, min_bytes));
      },
      nb::arg("members"), nb::arg("bytes"), nb::arg("min_bytes"),
      "Grows the group's symmetric arena to at least `bytes`; returns its size.");

  m.def("nccl_groups", []() {
    nb::list out;
    for (auto& g : jax_symm::NcclGroups()) {
      nb::dict d;
      d["members"] = g.members;
      d["local_devices"] = g.local_global_ids;
      d["arena_bytes"] = g.arena_bytes;
      d["symmetric_windows"] = g.symmetric_windows;
      d["stall_watch"] = g.stall_watch;
      d["collectives_done"] = g.collectives_done;
      out.append(d);
    }
    return out;
  });

  m.def(
      "nccl_set_abort_callback",
      [](nb::object fn) {
        *abort_callback = fn;
        jax_symm::NcclSetAbortNotifier(fn.is_none() ? nullptr : &NotifyPython);
      },
      nb::arg("fn").none(),
      "fn(message) is called on the NCCL watchdog's thread for each communicator it "
      "aborts; None stops it.");

  m.def(
      "nccl_abort_groups_with",
      [](std::vector<int64_t> ids, const std::string& cause) {
        nb::gil_scoped_release release;  // the notifier takes the GIL
        return jax_symm::NcclAbortGroupsWith(ids, cause);
      },
      nb::arg("global_ids"), nb::arg("cause"),
      "Aborts this process's communicators whose groups hold one of `global_ids`.");

  m.def("nccl_watchdog_rounds", &jax_symm::NcclWatchdogRounds,
        "How many rounds the NCCL watchdog has polled (diagnostics).");

  m.def("nccl_aborted", []() { return jax_symm::NcclAborted(); },
        "Why the watchdog aborted communicators of this process (one message each).");

  m.def(
      "nccl_shutdown",
      [](bool orderly) {
        nb::gil_scoped_release release;
        jax_symm::NcclShutdown(orderly);
      },
      nb::arg("orderly"));

  m.def(
      "nccl_time_raw",
      [](std::vector<int64_t> members, const std::string& op, size_t bytes_per_rank,
         const std::string& dtype, int iters, int repeats) {
        nb::gil_scoped_release release;
        return Value(jax_symm::NcclTimeRaw(members, op, bytes_per_rank, dtype, iters, repeats));
      },
      nb::arg("members"), nb::arg("op"), nb::arg("bytes_per_rank"), nb::arg("dtype"),
      nb::arg("iters"), nb::arg("repeats"),
      "Microseconds per raw NCCL call of `op` ('all_gather', 'reduce_scatter', "
      "'all_reduce') on `dtype` (numpy name) on the group's arena, one figure per "
      "repeat (CUDA events). Bench only.");
}
