#include "nccl_api.h"

#include <dlfcn.h>
#include <link.h>

#include <atomic>
#include <mutex>

namespace jax_symm {
namespace {

std::mutex api_mu;
NcclApi* loaded_api = nullptr;  // never freed: handlers may run during exit

template <typename Fn>
bool Resolve(void* lib, const char* name, Fn* fn) {
  *fn = reinterpret_cast<Fn>(dlsym(lib, name));
  return *fn != nullptr;
}

std::string LibraryPath(void* lib, void* symbol) {
  Dl_info info;
  if (symbol != nullptr && dladdr(symbol, &info) && info.dli_fname) return info.dli_fname;
  return "?";
}

}  // namespace

Error CudaCheck(CUresult result, const char* what) {
  if (result == 0) return Error::Success();
  const char* msg = "unknown CUDA error";
  if (loaded_api && loaded_api->cuGetErrorString) loaded_api->cuGetErrorString(result, &msg);
  return Internal(std::string(what) + " failed: CUDA error " + std::to_string(result) +
                  ": " + msg);
}

Error NcclCheck(ncclResult_t result, const char* what, ncclComm_t comm) {
  if (result == 0) return Error::Success();
  std::string msg = loaded_api ? loaded_api->ncclGetErrorString(result) : "unknown";
  if (loaded_api && loaded_api->ncclGetLastError) {
    const char* last = loaded_api->ncclGetLastError(comm);
    if (last && *last) msg += " (" + std::string(last) + ")";
  }
  return Internal(std::string(what) + " failed: NCCL error " + std::to_string(result) +
                  ": " + msg);
}

const NcclApi* LoadedNcclApi() {
  std::lock_guard<std::mutex> lock(api_mu);
  return loaded_api;
}

namespace {
std::atomic<bool> all_to_all_by_send_recv{false};
}  // namespace

void SetAllToAllBySendRecv(bool on) { all_to_all_by_send_recv.store(on); }
bool AllToAllBySendRecv() { return all_to_all_by_send_recv.load(std::memory_order_relaxed); }

const char* AllToAllServer(const NcclApi& api) {
  if (api.ncclAlltoAll != nullptr && !AllToAllBySendRecv()) return "ncclAlltoAll";
  if (api.ncclSend != nullptr && api.ncclRecv != nullptr) return "ncclSend/ncclRecv";
  return "";
}

ErrorOr<const NcclApi*> LoadNcclApi(const std::string& nccl_hint) {
  std::lock_guard<std::mutex> lock(api_mu);
  if (loaded_api) return static_cast<const NcclApi*>(loaded_api);

  void* cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
  if (!cuda) return Internal(std::string("cannot load the CUDA driver: ") + dlerror());
  // The copy JAX loaded, if any; else the wheel's copy that JAX would load.
  void* nccl = dlopen("libnccl.so.2", RTLD_NOW | RTLD_NOLOAD);
  if (!nccl && !nccl_hint.empty()) nccl = dlopen(nccl_hint.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!nccl) {
    const char* why = dlerror();  // one call: a second returns null
    return Internal("cannot find libnccl.so.2 (is jax's CUDA plugin with the nvidia-nccl "
                    "wheel installed?): " + std::string(why ? why : "not loaded"));
  }

  auto* api = new NcclApi();
  bool ok = Resolve(cuda, "cuInit", &api->cuInit) &&
            Resolve(cuda, "cuDeviceGet", &api->cuDeviceGet) &&
            Resolve(cuda, "cuDevicePrimaryCtxRetain", &api->cuDevicePrimaryCtxRetain) &&
            Resolve(cuda, "cuCtxSetCurrent", &api->cuCtxSetCurrent) &&
            Resolve(cuda, "cuCtxSynchronize", &api->cuCtxSynchronize) &&
            Resolve(cuda, "cuGetErrorString", &api->cuGetErrorString) &&
            Resolve(cuda, "cuMemcpyDtoDAsync_v2", &api->cuMemcpyDtoDAsync) &&
            Resolve(cuda, "cuStreamCreate", &api->cuStreamCreate) &&
            Resolve(cuda, "cuStreamDestroy_v2", &api->cuStreamDestroy) &&
            Resolve(cuda, "cuStreamSynchronize", &api->cuStreamSynchronize) &&
            Resolve(cuda, "cuEventCreate", &api->cuEventCreate) &&
            Resolve(cuda, "cuEventRecord", &api->cuEventRecord) &&
            Resolve(cuda, "cuEventSynchronize", &api->cuEventSynchronize) &&
            Resolve(cuda, "cuEventElapsedTime", &api->cuEventElapsedTime) &&
            Resolve(cuda, "cuEventDestroy_v2", &api->cuEventDestroy);
  if (!ok) {
    delete api;
    return Internal("the CUDA driver lacks a required entry point");
  }
  ok = Resolve(nccl, "ncclGetVersion", &api->ncclGetVersion) &&
       Resolve(nccl, "ncclGetUniqueId", &api->ncclGetUniqueId) &&
       Resolve(nccl, "ncclCommInitRank", &api->ncclCommInitRank) &&
       Resolve(nccl, "ncclCommDestroy", &api->ncclCommDestroy) &&
       Resolve(nccl, "ncclCommAbort", &api->ncclCommAbort) &&
       Resolve(nccl, "ncclCommGetAsyncError", &api->ncclCommGetAsyncError) &&
       Resolve(nccl, "ncclGroupStart", &api->ncclGroupStart) &&
       Resolve(nccl, "ncclGroupEnd", &api->ncclGroupEnd) &&
       Resolve(nccl, "ncclGetErrorString", &api->ncclGetErrorString) &&
       Resolve(nccl, "ncclAllGather", &api->ncclAllGather) &&
       Resolve(nccl, "ncclReduceScatter", &api->ncclReduceScatter) &&
       Resolve(nccl, "ncclAllReduce", &api->ncclAllReduce);
  if (!ok) {
    delete api;
    return Internal("libnccl.so.2 lacks a required entry point");
  }
  // Optional: the progress beacon's driver entry points (without them no
  // stall bound), then what newer NCCLs only have.
  Resolve(cuda, "cuMemHostAlloc", &api->cuMemHostAlloc);
  Resolve(cuda, "cuMemHostGetDevicePointer_v2", &api->cuMemHostGetDevicePointer);
  Resolve(cuda, "cuStreamWriteValue32_v2", &api->cuStreamWriteValue32);
  Resolve(cuda, "cuModuleLoadData", &api->cuModuleLoadData);
  Resolve(cuda, "cuModuleGetFunction", &api->cuModuleGetFunction);
  Resolve(cuda, "cuLaunchKernel", &api->cuLaunchKernel);
  Resolve(nccl, "ncclGetLastError", &api->ncclGetLastError);
  Resolve(nccl, "ncclMemAlloc", &api->ncclMemAlloc);
  Resolve(nccl, "ncclMemFree", &api->ncclMemFree);
  Resolve(nccl, "ncclCommWindowRegister", &api->ncclCommWindowRegister);
  Resolve(nccl, "ncclCommWindowDeregister", &api->ncclCommWindowDeregister);
  Resolve(nccl, "ncclCommRevoke", &api->ncclCommRevoke);
  Resolve(nccl, "ncclAlltoAll", &api->ncclAlltoAll);
  Resolve(nccl, "ncclSend", &api->ncclSend);
  Resolve(nccl, "ncclRecv", &api->ncclRecv);
  api->nccl_path = LibraryPath(nccl, reinterpret_cast<void*>(api->ncclGetVersion));
  // Published only once both checks pass, so a failed load fails again next
  // time instead of handing out a half-initialised API.
  if (ncclResult_t r = api->ncclGetVersion(&api->nccl_version); r != 0) {
    Error err = Internal("ncclGetVersion failed: NCCL error " + std::to_string(r) + ": " +
                         api->ncclGetErrorString(r));
    delete api;
    return err;
  }
  if (CUresult r = api->cuInit(0); r != 0) {
    const char* msg = "unknown CUDA error";
    api->cuGetErrorString(r, &msg);
    Error err = Internal("cuInit failed: CUDA error " + std::to_string(r) + ": " + msg);
    delete api;
    return err;
  }
  loaded_api = api;
  return static_cast<const NcclApi*>(api);
}

}  // namespace jax_symm
