// qcompile-run: runs a qcompile artifact's library with the TVM runtime alone (no Python), for devices.
//
//   qcompile-run model.so OUT_DIR IN_0.npy [IN_1.npy ...] [--repeat N]
//
// Inputs are .npy files in the order of manifest.json "inputs" (C order, little-endian); output i is
// written to OUT_DIR/output_i.npy. With --repeat N the call is timed N more times and the median
// latency is printed as "latency_ms <value>". Exit status: 0 ok, 2 bad input, 1 runtime failure.
// Only tvm-ffi's headers: the apache-tvm wheel ships an incomplete tvm/runtime include tree.
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using tvm::ffi::Tensor;

struct BadInput : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct DType {
  const char* descr;
  DLDataType dl;
};

// The dtypes a qcompile library takes or returns.
const DType kDTypes[] = {
    {"<f4", {kDLFloat, 32, 1}}, {"<f2", {kDLFloat, 16, 1}}, {"|u1", {kDLUInt, 8, 1}},
    {"|i1", {kDLInt, 8, 1}},    {"<i2", {kDLInt, 16, 1}},   {"<i4", {kDLInt, 32, 1}},
    {"<i8", {kDLInt, 64, 1}},   {"<f8", {kDLFloat, 64, 1}},
};

DLDataType DTypeFromDescr(const std::string& descr, const std::string& path) {
  for (const DType& d : kDTypes) {
    if (descr == d.descr) return d.dl;
  }
  throw BadInput(path + ": unsupported .npy dtype " + descr);
}

const char* DescrFromDType(DLDataType t) {
  for (const DType& d : kDTypes) {
    if (d.dl.code == t.code && d.dl.bits == t.bits && d.dl.lanes == t.lanes) return d.descr;
  }
  throw std::runtime_error("output has a dtype .npy cannot hold here");
}

// The value of `key` in a .npy header dict ("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }").
std::string HeaderField(const std::string& header, const std::string& key, const std::string& path) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw BadInput(path + ": .npy header has no " + key);
  at = header.find(':', at);
  size_t end = at + 1;
  while (end < header.size() && header[end] == ' ') ++end;
  if (header[end] == '(') return header.substr(end, header.find(')', end) - end + 1);
  if (header[end] == '\'') return header.substr(end + 1, header.find('\'', end + 1) - end - 1);
  return header.substr(end, header.find(',', end) - end);
}

// Host memory for input tensors, 64-byte aligned as TVM's kernels assume.
struct HostAlloc {
  void AllocData(DLTensor* t) {
    size_t n = (tvm::ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, n == 0 ? 64 : n);
    if (t->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

Tensor ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw BadInput("cannot read " + path);
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw BadInput(path + " is not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(header_len, '\0');
  if (!in.read(&header[0], header_len)) throw BadInput(path + ": truncated .npy header");
  if (HeaderField(header, "fortran_order", path) != "False") throw BadInput(path + " is Fortran-ordered");
  DLDataType dtype = DTypeFromDescr(HeaderField(header, "descr", path), path);
  std::string dims = HeaderField(header, "shape", path);
  std::vector<int64_t> shape;
  std::stringstream ss(dims.substr(1, dims.size() - 2));
  std::string item;
  int64_t count = 1;
  while (std::getline(ss, item, ',')) {
    if (item.find_first_not_of(' ') == std::string::npos) continue;
    shape.push_back(std::stoll(item));
    count *= shape.back();
  }
  size_t nbytes = static_cast<size_t>(count) * (dtype.bits / 8);
  Tensor t = Tensor::FromNDAlloc(HostAlloc(), tvm::ffi::Shape(shape), dtype, DLDevice{kDLCPU, 0});
  if (!in.read(static_cast<char*>(t.data_ptr()), nbytes)) throw BadInput(path + ": fewer bytes than its shape says");
  return t;
}

void WriteNpy(const Tensor& t, const std::string& path) {
  if (t.device().device_type != kDLCPU || !t.IsContiguous()) throw std::runtime_error("output is not a dense host tensor");
  std::ostringstream dict;
  dict << "{'descr': '" << DescrFromDType(t.dtype()) << "', 'fortran_order': False, 'shape': (";
  int64_t count = 1;
  for (int64_t d : t.shape()) {
    dict << d << ", ";
    count *= d;
  }
  dict << "), }";
  std::string header = dict.str();
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  size_t nbytes = static_cast<size_t>(count) * (t.dtype().bits / 8);
  const char* data = static_cast<const char*>(t.data_ptr()) + t.byte_offset();
  std::ofstream out(path, std::ios::binary);
  uint16_t len = static_cast<uint16_t>(header.size());
  const char lenb[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(lenb, 2);
  out.write(header.data(), header.size());
  out.write(data, nbytes);
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::vector<Tensor> Outputs(const tvm::ffi::Any& ret) {
  if (auto t = ret.as<Tensor>()) return {*t};
  std::vector<Tensor> outs;
  for (const tvm::ffi::Any& item : ret.cast<tvm::ffi::Array<tvm::ffi::Any>>()) outs.push_back(item.cast<Tensor>());
  return outs;
}

// The library's own parallel launcher (qcompile/deploy/pool.c) in the pointer TVM's loader filled with its
// pool, unless QCOMPILE_THREAD_POOL names one of TVM's pools (tvm, dedicated).
void InstallLauncher(const std::string& path) {
  const char* pool = std::getenv("QCOMPILE_THREAD_POOL");
  if (pool != nullptr && (std::string(pool) == "tvm" || std::string(pool) == "dedicated")) return;
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr) return;
  void* launch = dlsym(handle, "qcompile_parallel_launch");
  void** pointer = static_cast<void**>(dlsym(handle, "__TVMBackendParallelLaunch"));
  if (launch != nullptr && pointer != nullptr) *pointer = launch;
  dlclose(handle);
}

int Run(int argc, char** argv) {
  std::vector<std::string> positional;
  int repeat = 0;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--repeat" && i + 1 < argc) {
      repeat = std::stoi(argv[++i]);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() < 3) {
    throw BadInput("usage: qcompile-run model.so OUT_DIR IN_0.npy [IN_1.npy ...] [--repeat N]");
  }
  std::vector<Tensor> inputs;
  for (size_t i = 2; i < positional.size(); ++i) inputs.push_back(ReadNpy(positional[i]));

  tvm::ffi::Module lib = tvm::ffi::Module::LoadFromFile(positional[0]);
  InstallLauncher(positional[0]);
  tvm::ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<tvm::ffi::Module>();
  const int kPooledAllocator = 2;
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  tvm::ffi::Function main_fn = vm->GetFunction("main").value();

  std::vector<tvm::ffi::AnyView> args(inputs.begin(), inputs.end());
  tvm::ffi::Any ret;
  main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
  std::vector<Tensor> outs = Outputs(ret);
  for (size_t i = 0; i < outs.size(); ++i) {
    WriteNpy(outs[i], positional[1] + "/output_" + std::to_string(i) + ".npy");
  }
  if (repeat > 0) {
    std::vector<double> ms;
    for (int r = 0; r < repeat; ++r) {
      auto start = std::chrono::steady_clock::now();
      main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("latency_ms %.4f\n", ms[ms.size() / 2]);
  }
  std::printf("wrote %zu output(s) to %s\n", outs.size(), positional[1].c_str());
  return 0;
}

// The thread pool qcompile's Python runtime uses (qcompile/threads.py): workers sleep between kernels
// and are not pinned, so other busy processes on the device cost about what they cost onnxruntime.
// QCOMPILE_THREAD_POOL=dedicated keeps TVM's spinning, pinned pool; TVM_* variables already set win.
void ConfigureThreadPool() {
  const char* pool = std::getenv("QCOMPILE_THREAD_POOL");
  if (pool != nullptr && std::string(pool) == "dedicated") return;
  setenv("TVM_THREAD_POOL_SPIN_COUNT", "0", 0);
  setenv("TVM_BIND_THREADS", "0", 0);
}

}  // namespace

int main(int argc, char** argv) {
  ConfigureThreadPool();  // before the runtime starts its pool (the first parallel kernel)
  try {
    return Run(argc, argv);
  } catch (const BadInput& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
