// A snapshot of a module tree's Python state, checked in one call: what a
// captured inference program (effconv/program.py) assumes has not changed
// since it was recorded.
#pragma once
#include <torch/extension.h>

namespace effconv {

// Whether dict_tags works here: CPython 3.11 (PEP 509's version tags; 3.12
// deprecated them).
bool dict_tags_supported();

// Each dict's version tag (PEP 509: CPython gives a dict a new, never reused
// tag whenever it changes), as int64 [n].
at::Tensor dict_tags(const pybind11::list& dicts);

// (version, data pointer) of each tensor, as int64 [n, 2]; RuntimeError for
// an inference tensor (it has no version counter).
at::Tensor tensor_stamps(const std::vector<at::Tensor>& tensors);

// Whether every dict still has its tag and every tensor its stamp. One tag
// per dict instead of each value's identity: MobileNetV2's 1280 dicts took
// 138 us to compare by value after a forward had evicted them from cache,
// 16 us by tag (its 314 tensors: 38 us).
bool snapshot_holds(const pybind11::list& dicts, const at::Tensor& tags, const pybind11::list& tensors,
                    const at::Tensor& stamps);

}  // namespace effconv
