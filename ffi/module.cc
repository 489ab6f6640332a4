// The Python extension `jax_symm._jax_symm`: FFI handler capsules and the
// set-up calls that lowering makes outside any handler.
#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "device_table.h"
#include "host_collectives.h"
#include "host_window.h"

namespace nb = nanobind;

namespace {

template <typename Fn>
nb::capsule Capsule(Fn* fn) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, Fn, XLA_FFI_CallFrame*>,
                "not an XLA FFI handler");
  return nb::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace

NB_MODULE(_jax_symm, m) {
  m.doc() = "jax_symm native core: FFI handlers and transport set-up.";

  m.def("host_handlers", []() {
    nb::dict d;
    d["all_gather"] = Capsule(jax_symm::HostAllGather);
    d["reduce_scatter"] = Capsule(jax_symm::HostReduceScatter);
    d["all_reduce"] = Capsule(jax_symm::HostAllReduce);
    return d;
  });

  m.def("set_local_devices", &jax_symm::SetLocalDevices,
        nb::arg("global_id_by_ordinal"),
        "Tells handlers which global device id each local ordinal is.");

  m.def(
      "set_host_config",
      [](std::string session, double timeout_s, double poll_s) {
        jax_symm::SetHostConfig({std::move(session), timeout_s, poll_s});
      },
      nb::arg("session"), nb::arg("timeout_s"), nb::arg("poll_s"));

  m.def("host_windows", &jax_symm::HostWindow::List,
        "(name, bytes) of each shared-memory window this process mapped.");
  m.def("host_unlink_all", &jax_symm::HostWindow::UnlinkAll,
        "Unlinks this process's shared-memory windows (mappings stay valid).");
}
