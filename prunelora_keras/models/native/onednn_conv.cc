// 2-D convolutions (NHWC activations, HWIO kernels, float32) through oneDNN, as XLA FFI handlers.
//
// prunelora_keras.models.onednn compiles this file on first use (g++, the jaxlib FFI headers, the
// onednn-devel-cpu-gomp headers) and calls the three handlers from a jax.custom_vjp convolution on
// JAX's CPU platform: XLA:CPU's own convolutions run at 55-60% of oneDNN's speed per core, their
// weight gradients at 15-35% (benchmarks/conv_profile.py). Results equal lax's to float rounding.
#include <cstdint>
#include <exception>
#include <map>
#include <mutex>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;
using Dt = memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  memory::dims src, weights, dst, strides, pad_l, pad_r;

  std::vector<int64_t> Key() const {
    std::vector<int64_t> key;
    for (const memory::dims* d : {&src, &weights, &dst, &strides, &pad_l, &pad_r}) key.insert(key.end(), d->begin(), d->end());
    return key;
  }
};

template <typename A, typename B, typename C>
Geometry Shapes(const A& x, const B& w, const C& y, int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                int64_t pr) {
  // oneDNN's logical order is (N, C, H, W) and (O, I, KH, KW); the memory tags give the physical layout.
  return Geometry{{x[0], x[3], x[1], x[2]}, {w[3], w[2], w[0], w[1]}, {y[0], y[3], y[1], y[2]},
                  {sh, sw}, {pt, pl}, {pb, pr}};
}

memory::desc Plain(const memory::dims& dims, Tag tag) { return memory::desc(dims, Dt::f32, tag); }

// Every primitive takes its scratchpad from us (scratchpad_mode::user). oneDNN's default ("library")
// binds a primitive to a thread-local buffer of the thread that created it but reads the executing
// thread's; XLA runs these handlers on any of its pool's threads, so a cached primitive executed on
// another thread got a null or too small buffer (a segmentation fault in gemm-based weight gradients on
// an AVX2 CPU, 2026-12-07).
dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, Plain(g.src, Tag::nhwc),
      Plain(g.weights, Tag::any), Plain(g.dst, Tag::nhwc), g.strides, g.pad_l, g.pad_r, UserScratchpad());
}

// One primitive (and its descriptor) per geometry: choosing an implementation costs about a
// millisecond, and a training step calls the same few shapes every time.
template <typename Primitive>
struct Entry {
  typename Primitive::primitive_desc pd;
  Primitive primitive;
};

template <typename Primitive, typename Make>
const Entry<Primitive>& Cached(const Geometry& g, Make make) {
  static std::mutex mutex;
  static std::map<std::vector<int64_t>, Entry<Primitive>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(g.Key());
  if (it == cache.end()) {
    auto pd = make(g);
    it = cache.emplace(g.Key(), Entry<Primitive>{pd, Primitive(pd)}).first;
  }
  return it->second;
}

// The caller's HWIO kernel in the layout the primitive chose (a reorder when they differ).
memory WeightsIn(const memory::desc& want, const Geometry& g, const float* data, dnnl::stream& s) {
  memory user(Plain(g.weights, Tag::hwio), Engine(), const_cast<float*>(data));
  if (want == user.get_desc()) return user;
  memory out(want, Engine());
  dnnl::reorder(user, out).execute(s, user, out);
  return out;
}

ffi::Error Failed(const std::exception& e) { return ffi::Error(ffi::ErrorCode::kInternal, e.what()); }

template <typename A, typename B, typename C>
bool Rank4(const A& a, const B& b, const C& c) {
  return a.size() == 4 && b.size() == 4 && c.size() == 4;
}

ffi::Error NotRank4() { return ffi::Error(ffi::ErrorCode::kInvalidArgument, "expected NHWC inputs and an HWIO kernel"); }

// One oneDNN call at a time: each already uses every core through OpenMP, and XLA:CPU runs
// independent operations (a layer's two gradients) on several threads at once; two OpenMP teams on
// the same cores oversubscribe them.
std::mutex& Running() {
  static std::mutex mutex;
  return mutex;
}

// The scratchpad of the running call: one buffer, grown to the largest request, used under Running()
// (one call at a time), 64-byte aligned as oneDNN's own.
memory Scratchpad(const memory::desc& desc) {
  static std::vector<char> buffer;
  size_t bytes = desc.get_size();
  if (buffer.size() < bytes + 64) buffer.resize(bytes + 64);
  auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
  return memory(desc, Engine(), reinterpret_cast<void*>((address + 63) & ~std::uintptr_t{63}));
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y, int64_t sh,
                   int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  std::lock_guard<std::mutex> running(Running());
  if (!Rank4(x.dimensions(), w.dimensions(), y->dimensions())) return NotRank4();
  try {
    Geometry g = Shapes(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr);
    const auto& e = Cached<dnnl::convolution_forward>(g, ForwardDesc);
    dnnl::stream s(Engine());
    memory weights = WeightsIn(e.pd.weights_desc(), g, w.typed_data(), s);
    memory src(e.pd.src_desc(), Engine(), const_cast<float*>(x.typed_data()));
    memory dst(e.pd.dst_desc(), Engine(), y->typed_data());
    e.primitive.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst},
                            {DNNL_ARG_SCRATCHPAD, Scratchpad(e.pd.scratchpad_desc())}});
    s.wait();
  } catch (const std::exception& err) {
    return Failed(err);
  }
  return ffi::Error::Success();
}

dnnl::convolution_backward_data::primitive_desc BackwardDataDesc(const Geometry& g) {
  return dnnl::convolution_backward_data::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, Plain(g.src, Tag::nhwc), Plain(g.weights, Tag::any),
      Plain(g.dst, Tag::nhwc), g.strides, g.pad_l, g.pad_r, ForwardDesc(g), UserScratchpad());
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx, int64_t sh,
                        int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  std::lock_guard<std::mutex> running(Running());
  if (!Rank4(dx->dimensions(), w.dimensions(), dy.dimensions())) return NotRank4();
  try {
    Geometry g = Shapes(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
    const auto& e = Cached<dnnl::convolution_backward_data>(g, BackwardDataDesc);
    dnnl::stream s(Engine());
    memory weights = WeightsIn(e.pd.weights_desc(), g, w.typed_data(), s);
    memory diff_dst(e.pd.diff_dst_desc(), Engine(), const_cast<float*>(dy.typed_data()));
    memory diff_src(e.pd.diff_src_desc(), Engine(), dx->typed_data());
    e.primitive.execute(s, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DIFF_SRC, diff_src},
                            {DNNL_ARG_SCRATCHPAD, Scratchpad(e.pd.scratchpad_desc())}});
    s.wait();
  } catch (const std::exception& err) {
    return Failed(err);
  }
  return ffi::Error::Success();
}

dnnl::convolution_backward_weights::primitive_desc BackwardWeightsDesc(const Geometry& g) {
  return dnnl::convolution_backward_weights::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, Plain(g.src, Tag::nhwc), Plain(g.weights, Tag::any),
      Plain(g.dst, Tag::nhwc), g.strides, g.pad_l, g.pad_r, ForwardDesc(g), UserScratchpad());
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                           int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  std::lock_guard<std::mutex> running(Running());
  if (!Rank4(x.dimensions(), dw->dimensions(), dy.dimensions())) return NotRank4();
  try {
    Geometry g = Shapes(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
    const auto& e = Cached<dnnl::convolution_backward_weights>(g, BackwardWeightsDesc);
    dnnl::stream s(Engine());
    memory src(e.pd.src_desc(), Engine(), const_cast<float*>(x.typed_data()));
    memory diff_dst(e.pd.diff_dst_desc(), Engine(), const_cast<float*>(dy.typed_data()));
    memory user(Plain(g.weights, Tag::hwio), Engine(), dw->typed_data());
    bool plain = e.pd.diff_weights_desc() == user.get_desc();
    memory diff_weights = plain ? user : memory(e.pd.diff_weights_desc(), Engine());
    e.primitive.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
                            {DNNL_ARG_SCRATCHPAD, Scratchpad(e.pd.scratchpad_desc())}});
    if (!plain) dnnl::reorder(diff_weights, user).execute(s, diff_weights, user);
    s.wait();
  } catch (const std::exception& err) {
    return Failed(err);
  }
  return ffi::Error::Success();
}

}  // namespace

#define PLK_CONV_BINDING                                                                                    \
  ffi::Ffi::Bind()                                                                                          \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                         \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                         \
      .Ret<ffi::Buffer<ffi::F32>>()                                                                         \
      .Attr<int64_t>("sh")                                                                                  \
      .Attr<int64_t>("sw")                                                                                  \
      .Attr<int64_t>("pt")                                                                                  \
      .Attr<int64_t>("pb")                                                                                  \
      .Attr<int64_t>("pl")                                                                                  \
      .Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(PlkConvForward, Forward, PLK_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(PlkConvBackwardData, BackwardData, PLK_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(PlkConvBackwardWeights, BackwardWeights, PLK_CONV_BINDING);
