// The GPU transport's view of its libraries: the slice of NCCL's host API and
// of the CUDA driver API (contexts, copies, streams and events around the
// NCCL calls) that jax_symm uses, declared here and resolved at run time with
// dlopen/dlsym. Named nccl_* as the rest of the GPU transport: nothing
// outside it calls CUDA.
//
// Why not link them: JAX already loaded its own libnccl.so.2 (from the
// nvidia-nccl wheel) and a second copy in one process corrupts NCCL's state;
// and one built package must serve both the CUDA 12 and the CUDA 13 JAX
// stacks, so no libcudart of either major may be linked. The driver API and
// this part of NCCL's API are ABI-stable, as SGLang's and vLLM's ctypes
// wrappers rely on too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "ffi_common.h"
#include "nccl_versions.h"

namespace jax_symm {

// ---- CUDA driver API ----
using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using CUcontext = struct CUctx_st*;
using CUstream = struct CUstream_st*;
using CUmodule = struct CUmod_st*;
using CUfunction = struct CUfunc_st*;
constexpr unsigned int kCuMemHostAllocPortable = 0x01;   // CU_MEMHOSTALLOC_PORTABLE
constexpr unsigned int kCuMemHostAllocDeviceMap = 0x02;  // CU_MEMHOSTALLOC_DEVICEMAP

// ---- NCCL ----
using ncclResult_t = int;
using ncclComm_t = struct ncclComm*;
using ncclWindow_t = struct ncclWindow_vidmem*;
struct ncclUniqueId {
  char internal[128];
};
// ncclDataType_t values (the ones jax_symm sums or moves).
enum NcclDataType : int {
  kNcclInt8 = 0, kNcclUint8 = 1, kNcclInt32 = 2, kNcclUint32 = 3, kNcclInt64 = 4,
  kNcclUint64 = 5, kNcclFloat16 = 6, kNcclFloat32 = 7, kNcclFloat64 = 8,
  kNcclBfloat16 = 9,
};
constexpr int kNcclSum = 0;                  // ncclSum
// ncclResult_t values the watchdog tells apart.
constexpr ncclResult_t kNcclSuccess = 0;
constexpr ncclResult_t kNcclInProgress = 7;
constexpr int kNcclWinCollSymmetric = 0x01;  // NCCL_WIN_COLL_SYMMETRIC

struct NcclApi {
  // driver
  CUresult (*cuInit)(unsigned int);
  CUresult (*cuDeviceGet)(CUdevice*, int);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice);
  CUresult (*cuCtxSetCurrent)(CUcontext);
  CUresult (*cuCtxSynchronize)();
  CUresult (*cuGetErrorString)(CUresult, const char**);
  CUresult (*cuMemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
  CUresult (*cuStreamCreate)(CUstream*, unsigned int);
  CUresult (*cuStreamDestroy)(CUstream);
  CUresult (*cuStreamSynchronize)(CUstream);
  CUresult (*cuEventCreate)(void**, unsigned int);
  CUresult (*cuEventRecord)(void*, CUstream);
  CUresult (*cuEventSynchronize)(void*);
  CUresult (*cuEventElapsedTime)(float*, void*, void*);
  CUresult (*cuEventDestroy)(void*);
  // The progress beacon's (nccl_comms.h); null where the driver lacks them,
  // and then collectives have no stall bound.
  CUresult (*cuMemHostAlloc)(void**, size_t, unsigned int);
  CUresult (*cuMemHostGetDevicePointer)(CUdeviceptr*, void*, unsigned int);
  CUresult (*cuStreamWriteValue32)(CUstream, CUdeviceptr, uint32_t, unsigned int);
  CUresult (*cuModuleLoadData)(CUmodule*, const void*);
  CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, const char*);
  CUresult (*cuLaunchKernel)(CUfunction, unsigned int, unsigned int, unsigned int,
                             unsigned int, unsigned int, unsigned int, unsigned int, CUstream,
                             void**, void**);
  bool beacon_entry_points() const {
    return cuMemHostAlloc && cuMemHostGetDevicePointer && cuStreamWriteValue32 &&
           cuModuleLoadData && cuModuleGetFunction && cuLaunchKernel;
  }
  // nccl
  ncclResult_t (*ncclGetVersion)(int*);
  ncclResult_t (*ncclGetUniqueId)(ncclUniqueId*);
  ncclResult_t (*ncclCommInitRank)(ncclComm_t*, int, ncclUniqueId, int);
  ncclResult_t (*ncclCommDestroy)(ncclComm_t);
  ncclResult_t (*ncclCommAbort)(ncclComm_t);
  ncclResult_t (*ncclCommGetAsyncError)(ncclComm_t, ncclResult_t*);
  ncclResult_t (*ncclGroupStart)();
  ncclResult_t (*ncclGroupEnd)();
  const char* (*ncclGetErrorString)(ncclResult_t);
  const char* (*ncclGetLastError)(ncclComm_t);
  ncclResult_t (*ncclAllGather)(const void*, void*, size_t, int, ncclComm_t, CUstream);
  ncclResult_t (*ncclReduceScatter)(const void*, void*, size_t, int, int, ncclComm_t,
                                    CUstream);
  ncclResult_t (*ncclAllReduce)(const void*, void*, size_t, int, int, ncclComm_t,
                                CUstream);
  // >= 2.19 / >= 2.27: null when the loaded NCCL is older.
  ncclResult_t (*ncclMemAlloc)(void**, size_t);
  ncclResult_t (*ncclMemFree)(void*);
  ncclResult_t (*ncclCommWindowRegister)(ncclComm_t, void*, size_t, ncclWindow_t*, int);
  ncclResult_t (*ncclCommWindowDeregister)(ncclComm_t, ncclWindow_t);
  // >= 2.28: aborts a communicator's work but keeps it (no wait for CUDA
  // graphs that captured it, unlike ncclCommAbort); null when older.
  ncclResult_t (*ncclCommRevoke)(ncclComm_t, int);
  // The all-to-all (nccl_enqueue.h): ncclAlltoAll from 2.28.3
  // (kAllToAllVersion), else grouped point-to-point calls (>= 2.7); null
  // when the loaded NCCL lacks them.
  ncclResult_t (*ncclAlltoAll)(const void*, void*, size_t, int, ncclComm_t, CUstream);
  ncclResult_t (*ncclSend)(const void*, size_t, int, int, ncclComm_t, CUstream);
  ncclResult_t (*ncclRecv)(void*, size_t, int, int, ncclComm_t, CUstream);

  int nccl_version = 0;      // e.g. 22809 for 2.28.9
  std::string nccl_path;     // the file the symbols came from
  bool symmetric_windows() const {
    return ncclCommWindowRegister != nullptr && nccl_version >= kSymmetricWindowsVersion;
  }
  bool gather_sends_in_place() const { return GatherSendsInPlace(nccl_version); }
  bool scatter_receives_in_place() const { return ScatterReceivesInPlace(nccl_version); }
};

// JAX_SYMM_NCCL_ALL_TO_ALL=send_recv (settings.py): the grouped sends serve
// the all-to-all even where ncclAlltoAll exists, so that fallback can be run
// on any NCCL. Set before the first call; read on every all-to-all.
void SetAllToAllBySendRecv(bool on);
bool AllToAllBySendRecv();
// What serves the all-to-all with `api` loaded: "ncclAlltoAll",
// "ncclSend/ncclRecv", or "" (neither: XLA's all-to-all serves).
const char* AllToAllServer(const NcclApi& api);

// Resolves the API once. `nccl_hint` is the wheel's libnccl.so.2, used only
// when no libnccl.so.2 is loaded in the process yet.
ErrorOr<const NcclApi*> LoadNcclApi(const std::string& nccl_hint);
// The API if LoadNcclApi has succeeded, else nullptr.
const NcclApi* LoadedNcclApi();

Error CudaCheck(CUresult result, const char* what);
Error NcclCheck(ncclResult_t result, const char* what, ncclComm_t comm = nullptr);

}  // namespace jax_symm
