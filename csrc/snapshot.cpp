#include "snapshot.h"

#include <torch/csrc/autograd/python_variable.h>

namespace effconv {

namespace {
int64_t stamp_ptr(const at::Tensor& t) {
  // A tensor without storage (meta, sparse) still has a stable identity.
  return t.has_storage() ? reinterpret_cast<int64_t>(t.data_ptr()) : 0;
}

#if PY_VERSION_HEX < 0x030C0000
int64_t tag(PyObject* d) { return static_cast<int64_t>(reinterpret_cast<PyDictObject*>(d)->ma_version_tag); }
#else
int64_t tag(PyObject*) { TORCH_CHECK(false, "dict version tags need CPython 3.11"); }
#endif

bool long_vector(const at::Tensor& t, int64_t n) {
  return t.dim() == 1 && t.size(0) == n && t.scalar_type() == at::kLong && t.is_contiguous();
}
}  // namespace

bool dict_tags_supported() { return PY_VERSION_HEX < 0x030C0000; }

at::Tensor dict_tags(const pybind11::list& dicts) {
  const Py_ssize_t n = PyList_GET_SIZE(dicts.ptr());
  auto out = at::empty({n}, at::kLong);
  auto* p = out.data_ptr<int64_t>();
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* d = PyList_GET_ITEM(dicts.ptr(), i);
    TORCH_CHECK(PyDict_Check(d), "dict_tags: expected dicts, got ", Py_TYPE(d)->tp_name, " at index ", i);
    p[i] = tag(d);
  }
  return out;
}

at::Tensor tensor_stamps(const std::vector<at::Tensor>& tensors) {
  auto out = at::empty({static_cast<int64_t>(tensors.size()), 2}, at::kLong);
  auto* p = out.data_ptr<int64_t>();
  for (const auto& t : tensors) {
    TORCH_CHECK(!t.is_inference(), "tensor_stamps: inference tensors have no version counter");
    *p++ = static_cast<int64_t>(t._version());
    *p++ = stamp_ptr(t);
  }
  return out;
}

bool snapshot_holds(const pybind11::list& dicts, const at::Tensor& tags, const pybind11::list& tensors,
                    const at::Tensor& stamps) {
  const Py_ssize_t n = PyList_GET_SIZE(dicts.ptr());
  if (!long_vector(tags, n)) return false;
  const int64_t* g = tags.data_ptr<int64_t>();
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* d = PyList_GET_ITEM(dicts.ptr(), i);
    if (!PyDict_Check(d) || tag(d) != g[i]) return false;
  }
  const Py_ssize_t m = PyList_GET_SIZE(tensors.ptr());
  if (stamps.dim() != 2 || stamps.size(0) != m || stamps.scalar_type() != at::kLong || !stamps.is_contiguous()) {
    return false;
  }
  const int64_t* s = stamps.data_ptr<int64_t>();
  for (Py_ssize_t i = 0; i < m; ++i, s += 2) {
    PyObject* obj = PyList_GET_ITEM(tensors.ptr(), i);
    if (!THPVariable_Check(obj)) return false;
    const at::Tensor& t = THPVariable_Unpack(obj);
    if (t.is_inference() || static_cast<int64_t>(t._version()) != s[0] || stamp_ptr(t) != s[1]) return false;
  }
  return true;
}

}  // namespace effconv
