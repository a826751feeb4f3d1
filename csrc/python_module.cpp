// The Python module exvae_fast._C (built by setup.py; the CMake build makes a plain shared
// library instead, loadable with torch.ops.load_library). It has no functions: importing it
// loads the library, whose TORCH_LIBRARY blocks register torch.ops.exvae_fast.*.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "exvae-fast compiled ops; they are called through torch.ops.exvae_fast",
      -1,
      nullptr,
  };
  return PyModule_Create(&module);
}
