//! Links the trainer against the libtorch that torch-sys found, with an rpath, so the
//! loader never picks another libtorch (e.g. Debian's) at run time, and keeps
//! libtorch_cuda linked: `--as-needed` would otherwise drop it and CUDA would silently
//! be missing.
fn main() {
    fss_shim();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

/// `eval`'s FSS: the dlib shim (`csrc/fss.cpp`) against Debian's libdlib-dev (the
/// setup installs it with libblas-dev and liblapack-dev, which dlib's headers call).
fn fss_shim() {
    println!("cargo:rerun-if-changed=csrc/fss.cpp");
    cc::Build::new()
        .cpp(true)
        .std("c++14")
        .file("csrc/fss.cpp")
        .flag_if_supported("-Wno-misleading-indentation")
        .flag_if_supported("-Wno-deprecated-copy")
        .warnings(false)
        .compile("reggan_fss");
    for lib in ["dlib", "lapack", "blas"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}
