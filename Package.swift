// swift-tools-version:5.10
import PackageDescription

// Kernels are always optimized: a debug build of ddepc still trains at a
// usable speed, and both backends call exactly the same code.
let kernelFlags: [CSetting] = [.unsafeFlags(["-O3", "-march=native", "-fno-math-errno"])]

let package = Package(
    name: "ddepc",
    products: [
        .executable(name: "ddepc", targets: ["ddepc"]),
        // Model files are compiled against this library (see Sources/Runtime/ModelFile.swift).
        .library(name: "ModelZoo", type: .dynamic, targets: ["ModelZoo"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // System libraries.
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS"),
        .systemLibrary(name: "CLLVM", path: "Sources/CLLVM"),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG"),
        .systemLibrary(name: "CZLib", path: "Sources/CZLib"),
        .systemLibrary(name: "CJPEG", path: "Sources/CJPEG"),
        // libjpeg behind an error manager that returns instead of exiting.
        .target(name: "JPEGCodec", dependencies: ["CJPEG"], cSettings: kernelFlags,
                linkerSettings: [.linkedLibrary("jpeg")]),

        // What compiler, generated code and kernels agree on: the kernel list
        // and signatures (C, KernelABI), the buffer layout, the manifest and
        // the steps' signature (Swift, ABI). Imports nothing else of ours.
        .target(name: "KernelABI"),
        .target(name: "ABI", dependencies: ["KernelABI"]),

        // The runtime kernels called by every compiled module (C, OpenBLAS,
        // and glibc's vector math library for random_normal).
        .target(name: "DDPKernels", dependencies: ["CBLAS", "KernelABI"], cSettings: kernelFlags,
                linkerSettings: [.linkedLibrary("openblas"), .linkedLibrary("mvec"), .linkedLibrary("m")]),

        .target(name: "IR"),
        .target(name: "Passes", dependencies: ["IR", "ABI"]),
        // libLLVM, loaded when the LLVM backend first runs (see llvm_loader.c).
        .target(name: "LLVMLoader", linkerSettings: [.linkedLibrary("dl")]),
        .target(name: "Codegen", dependencies: ["IR", "ABI", "CLLVM", "LLVMLoader"]),
        .target(name: "ModelZoo", dependencies: ["IR"]),
        // Loads artifacts and runs their steps: knows the ABI and the
        // kernels, not the compiler (it reads the IR's types, never its passes).
        .target(name: "Runtime", dependencies: ["ABI", "IR", "DDPKernels", "CPNG", "CZLib", "JPEGCodec"]),
        // Model files, the compile pipeline, the toolchain and the artifact it writes.
        .target(name: "Driver", dependencies: ["ABI", "IR", "Passes", "Codegen", "DDPKernels", "Runtime"]),
        .executableTarget(name: "ddepc", dependencies: [
            "ABI", "IR", "Passes", "Codegen", "Runtime", "Driver", "ModelZoo", "DDPKernels",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .target(name: "TestSupport", dependencies: ["IR"], path: "Tests/TestSupport"),
        .testTarget(name: "ABITests", dependencies: ["ABI", "IR", "DDPKernels"]),
        .testTarget(name: "IRTests", dependencies: ["IR", "Passes", "TestSupport"]),
        .testTarget(name: "PassesTests", dependencies: ["IR", "Passes", "ModelZoo", "TestSupport"]),
        .testTarget(name: "CodegenTests", dependencies: ["ABI", "IR", "Passes", "Codegen", "Runtime", "Driver", "DDPKernels", "TestSupport"]),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime", "DDPKernels", "TestSupport"]),
        .testTarget(name: "ModelZooTests", dependencies: ["ABI", "IR", "Passes", "ModelZoo", "TestSupport"]),
        .testTarget(name: "EndToEndTests", dependencies: ["ABI", "IR", "Passes", "Runtime", "Driver", "ModelZoo", "TestSupport", "DDPKernels"]),
        // PyTorch parity (fixtures in Tests/Fixtures, written by tools/make_fixtures.py) and weight import.
        .testTarget(name: "ParityTests", dependencies: ["ABI", "IR", "Passes", "Codegen", "Runtime", "Driver", "ModelZoo", "TestSupport"]),
    ]
)
