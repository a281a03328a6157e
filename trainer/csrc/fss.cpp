// FSS (face similarity score) shim: dlib's 5-point shape predictor and its
// face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat), behind a C API
// that trainer/src/eval/fss.rs calls. The network definition is the one of dlib's
// examples/dnn_face_recognition_ex.cpp (it must match the .dat file exactly).
#include <dlib/dnn.h>
#include <dlib/image_processing.h>
#include <dlib/image_processing/frontal_face_detector.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

using namespace dlib;

namespace {

template <template <int, template <typename> class, int, typename> class block, int N,
          template <typename> class BN, typename SUBNET>
using residual = add_prev1<block<N, BN, 1, tag1<SUBNET>>>;

template <template <int, template <typename> class, int, typename> class block, int N,
          template <typename> class BN, typename SUBNET>
using residual_down = add_prev2<avg_pool<2, 2, 2, 2, skip1<tag2<block<N, BN, 2, tag1<SUBNET>>>>>>;

template <int N, template <typename> class BN, int stride, typename SUBNET>
using block = BN<con<N, 3, 3, 1, 1, relu<BN<con<N, 3, 3, stride, stride, SUBNET>>>>>;

template <int N, typename SUBNET> using ares = relu<residual<block, N, affine, SUBNET>>;
template <int N, typename SUBNET> using ares_down = relu<residual_down<block, N, affine, SUBNET>>;

template <typename SUBNET> using alevel0 = ares_down<256, SUBNET>;
template <typename SUBNET> using alevel1 = ares<256, ares<256, ares_down<256, SUBNET>>>;
template <typename SUBNET> using alevel2 = ares<128, ares<128, ares_down<128, SUBNET>>>;
template <typename SUBNET> using alevel3 = ares<64, ares<64, ares<64, ares_down<64, SUBNET>>>>;
template <typename SUBNET> using alevel4 = ares<32, ares<32, ares<32, SUBNET>>>;

using anet_type = loss_metric<fc_no_bias<128, avg_pool_everything<
    alevel0<alevel1<alevel2<alevel3<alevel4<
    max_pool<3, 3, 2, 2, relu<affine<con<32, 7, 7, 2, 2,
    input_rgb_image_sized<150>>>>>>>>>>>>>;

struct Fss {
    shape_predictor sp;
    anet_type net;
    frontal_face_detector detector = get_frontal_face_detector();
};

void set_err(char* err, int len, const std::string& msg) {
    if (err && len > 0) {
        std::strncpy(err, msg.c_str(), static_cast<size_t>(len - 1));
        err[len - 1] = 0;
    }
}

}  // namespace

extern "C" {

// Loads the 5-point shape predictor and the recognition ResNet; null on failure (the
// reason in err).
void* reggan_fss_load(const char* shape_predictor, const char* resnet, char* err, int errlen) {
    try {
        auto* f = new Fss();
        deserialize(shape_predictor) >> f->sp;
        deserialize(resnet) >> f->net;
        return f;
    } catch (const std::exception& e) {
        set_err(err, errlen, e.what());
        return nullptr;
    }
}

void reggan_fss_free(void* handle) { delete static_cast<Fss*>(handle); }

// For each of n RGB images (h*w*3 bytes each, packed one after the other): the face
// rectangle is dlib's HOG frontal detector's largest face when `detect` is set and it
// finds one, else rect = {left, top, right, bottom}; then the 5 landmarks, the
// 150x150 chip (padding 0.25) and the 128-D embedding into out[i*128..]. found[i] is 1
// when the detector found the face, 0 when the given rectangle was used. Returns 0, or
// -1 with the reason in err.
int reggan_fss_embed(void* handle, const uint8_t* rgb, int n, int w, int h, int detect,
                     const int* rect, float* out, int* found, char* err, int errlen) {
    try {
        auto* f = static_cast<Fss*>(handle);
        std::vector<matrix<rgb_pixel>> chips;
        chips.reserve(static_cast<size_t>(n));
        const size_t stride = static_cast<size_t>(w) * static_cast<size_t>(h) * 3;
        for (int i = 0; i < n; ++i) {
            matrix<rgb_pixel> img(h, w);
            const uint8_t* p = rgb + stride * static_cast<size_t>(i);
            for (int y = 0; y < h; ++y) {
                for (int x = 0; x < w; ++x) {
                    const uint8_t* q = p + (static_cast<size_t>(y) * w + x) * 3;
                    img(y, x) = rgb_pixel(q[0], q[1], q[2]);
                }
            }
            rectangle box(rect[0], rect[1], rect[2], rect[3]);
            found[i] = 0;
            if (detect) {
                std::vector<rectangle> faces = f->detector(img);
                if (!faces.empty()) {
                    box = faces[0];
                    for (const auto& r : faces) {
                        if (r.area() > box.area()) box = r;
                    }
                    found[i] = 1;
                }
            }
            full_object_detection shape = f->sp(img, box);
            matrix<rgb_pixel> chip;
            extract_image_chip(img, get_face_chip_details(shape, 150, 0.25), chip);
            chips.push_back(std::move(chip));
        }
        std::vector<matrix<float, 0, 1>> desc = f->net(chips, 16);
        for (int i = 0; i < n; ++i) {
            for (long j = 0; j < 128; ++j) {
                out[static_cast<size_t>(i) * 128 + static_cast<size_t>(j)] = desc[static_cast<size_t>(i)](j);
            }
        }
        return 0;
    } catch (const std::exception& e) {
        set_err(err, errlen, e.what());
        return -1;
    }
}

}  // extern "C"
