#include "device_table.h"

#include <mutex>
#include <string>

namespace jax_symm {
namespace {
std::mutex table_mu;
std::vector<int64_t>& Table() {
  static auto* table = new std::vector<int64_t>();  // never destroyed: handlers may run at exit
  return *table;
}
}  // namespace

void SetLocalDevices(const std::vector<int64_t>& global_id_by_ordinal) {
  std::lock_guard<std::mutex> lock(table_mu);
  Table() = global_id_by_ordinal;
}

ErrorOr<int64_t> GlobalIdOfOrdinal(int32_t ordinal) {
  std::lock_guard<std::mutex> lock(table_mu);
  const auto& table = Table();
  if (ordinal < 0 || static_cast<size_t>(ordinal) >= table.size()) {
    return Internal("device ordinal " + std::to_string(ordinal) +
                    " is unknown; was jax_symm initialised after jax's backends?");
  }
  return table[ordinal];
}

}  // namespace jax_symm
