// python/cell_step.h — the Python functions of python/cell_step.cpp, for the method table of the
// module rnnkernels._C (python/ext.cpp).
#pragma once

#include <Python.h>

namespace rnnk {
namespace bridge {

// lstm_cell, gru_cell, rnn_cell, then a {nullptr} sentinel: a PyMethodDef table.
PyMethodDef* cell_step_methods();

}  // namespace bridge
}  // namespace rnnk
