#include "ffi_devices.h"

#include <map>
#include <mutex>
#include <string>

namespace jax_symm {
namespace {
std::mutex table_mu;
std::map<std::pair<int, int64_t>, int64_t>& Table() {
  // Never destroyed: handlers may still run while the interpreter exits.
  static auto* table = new std::map<std::pair<int, int64_t>, int64_t>();
  return *table;
}
}  // namespace

void SetLocalDevices(Platform platform, const std::vector<int64_t>& ordinals,
                     const std::vector<int64_t>& global_ids) {
  std::lock_guard<std::mutex> lock(table_mu);
  auto& table = Table();
  for (auto it = table.begin(); it != table.end();) {
    it = it->first.first == static_cast<int>(platform) ? table.erase(it) : std::next(it);
  }
  for (size_t i = 0; i < ordinals.size() && i < global_ids.size(); ++i) {
    table[{static_cast<int>(platform), ordinals[i]}] = global_ids[i];
  }
}

ErrorOr<int64_t> GlobalIdOfOrdinal(Platform platform, int32_t ordinal) {
  std::lock_guard<std::mutex> lock(table_mu);
  auto it = Table().find({static_cast<int>(platform), ordinal});
  if (it == Table().end()) {
    return Internal("device ordinal " + std::to_string(ordinal) +
                    " is unknown; was jax_symm initialised after jax's backends?");
  }
  return it->second;
}

}  // namespace jax_symm
