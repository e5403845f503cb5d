import ABI
import CLLVM
import Foundation
import IR
import LLVMLoader

/// An error from code generation or from the native toolchain (LLVM, cc).
public struct CodegenError: Error, CustomStringConvertible {
    public var message: String

    public init(_ message: String) { self.message = message }

    public var description: String { "error: \(message)" }
}

/// Renders lowered functions as one native object file through LLVM 14 (the C
/// API, typed pointers). Every entry point has the C backend's ABI,
///
///     int ddp_<name>(const ddp_buffers *b, const ddp_kernel_fn *k)
///
/// and computes exactly what `CEmitter`'s code computes, step for step: the
/// same kernel calls with the same arguments, the same copies and the same
/// float arithmetic in elementwise loops (libm's expf/logf/tanhf/erff/powf,
/// sqrt and fabs as IEEE operations, fmaxf/fminf as compares and selects, ordered
/// comparisons). Like the C backend, each elementwise loop is its own small
/// `noinline` function, here with `noalias` pointers (C's `restrict`). The
/// module is optimized with the `default<O3>` pipeline for the host CPU, so
/// elementwise loops are vectorized where their operations allow it.
public enum LLVMEmitter {
    /// Builds, verifies, optimizes and writes one object file holding an
    /// entry point per function. `irOutput`, when given, receives the
    /// optimized module as textual LLVM IR (`module.ll` beside an artifact).
    /// `disabledFeatures` are host CPU features the code must not use (e.g.
    /// "avx512f" when the kernels run their AVX2 path on an AVX-512 CPU).
    public static func emitObject(_ functions: [LoweredFunction], to url: URL, moduleName: String,
                                  irOutput: URL? = nil, disabledFeatures: [String] = []) throws {
        try withOptimizedModule(functions, moduleName: moduleName, disabledFeatures: disabledFeatures) { module, machine in
            if let irOutput {
                try printModule(module).write(to: irOutput, atomically: true, encoding: .utf8)
            }
            var message: UnsafeMutablePointer<CChar>?
            var path = Array(url.path.utf8CString)
            let failed = path.withUnsafeMutableBufferPointer {
                LLVMTargetMachineEmitToFile(machine, module, $0.baseAddress, LLVMObjectFile, &message)
            }
            let text = takeMessage(message)
            if failed != 0 {
                throw CodegenError("LLVM could not write \(url.path): \(text ?? "unknown error")")
            }
        }
    }

    /// The entry points as `objects.count` modules, each optimized and
    /// written on its own core (`LoweredFunction.partition`): LLVM compiles
    /// a module on one thread, and TransUNet's took 7 s on it. Each part
    /// has its own context and its own copies of the loops it calls.
    /// `irOutput` receives the optimized parts one after another, each
    /// beginning at its `; ModuleID` line.
    public static func emitObjects(_ functions: [LoweredFunction], to objects: [URL], moduleName: String,
                                   irOutput: URL? = nil, disabledFeatures: [String] = []) throws {
        guard objects.count > 1 else {
            return try emitObject(functions, to: objects[0], moduleName: moduleName, irOutput: irOutput,
                                  disabledFeatures: disabledFeatures)
        }
        try loadLLVM()
        _ = nativeTargetInitialized
        let part = LoweredFunction.partition(functions, into: objects.count)
        let irParts = objects.map { $0.deletingPathExtension().appendingPathExtension("ll") }
        try concurrentPerformThrowing(iterations: objects.count) { index in
            try emitObject(functions.indices.filter { part[$0] == index }.map { functions[$0] }, to: objects[index],
                           moduleName: "\(moduleName).part\(index)", irOutput: irOutput == nil ? nil : irParts[index],
                           disabledFeatures: disabledFeatures)
        }
        if let irOutput {
            let text = try irParts.map { try String(contentsOf: $0, encoding: .utf8) }.joined(separator: "\n")
            try text.write(to: irOutput, atomically: true, encoding: .utf8)
            for file in irParts { try? FileManager.default.removeItem(at: file) }
        }
    }

    /// The module as textual LLVM IR, after the O3 pipeline (`optimize`) or
    /// as generated.
    public static func moduleIR(_ functions: [LoweredFunction], moduleName: String, optimize: Bool = true) throws -> String {
        if optimize {
            return try withOptimizedModule(functions, moduleName: moduleName) { module, _ in printModule(module) }
        }
        try loadLLVM()
        let context = LLVMContextCreate()!
        defer { LLVMContextDispose(context) }
        let module = try ModuleEmitter(context: context, name: moduleName).emit(functions)
        defer { LLVMDisposeModule(module) }
        return printModule(module)
    }

    /// The optimized module as textual LLVM IR.
    public static func optimizedIR(_ functions: [LoweredFunction], moduleName: String) throws -> String {
        try moduleIR(functions, moduleName: moduleName, optimize: true)
    }

    /// Links object files into a shared library: `cc -shared -o output objects... -lm`.
    public static func linkSharedLibrary(objects: [URL], output: URL) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["cc", "-shared", "-o", output.path] + objects.map(\.path) + ["-lm"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do {
            try process.run()
        } catch {
            throw CodegenError("could not run cc to link \(output.lastPathComponent): \(error)")
        }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw CodegenError("linking \(output.lastPathComponent) failed (cc exit status \(process.terminationStatus)):\n\(text)")
        }
    }

    // MARK: - Module pipeline

    /// Loads libLLVM on first use: a process that never generates LLVM code
    /// (training, evaluation, the C backend) does not map it.
    private static func loadLLVM() throws {
        var error = [CChar](repeating: 0, count: 512)
        guard ddp_llvm_load(&error, error.count) != 0 else { throw CodegenError(String(cString: error)) }
    }

    /// Initializes the X86 target once per process.
    private static let nativeTargetInitialized: Bool = {
        LLVMInitializeX86TargetInfo()
        LLVMInitializeX86Target()
        LLVMInitializeX86TargetMC()
        LLVMInitializeX86AsmPrinter()
        LLVMInitializeX86AsmParser()
        return true
    }()

    /// Generates and verifies the module, creates a host target machine,
    /// runs the O3 pipeline and hands both to `body`; frees everything after.
    private static func withOptimizedModule<T>(_ functions: [LoweredFunction], moduleName: String,
                                               disabledFeatures: [String] = [],
                                               _ body: (LLVMModuleRef, LLVMTargetMachineRef) throws -> T) throws -> T {
        try loadLLVM()
        _ = nativeTargetInitialized
        let context = LLVMContextCreate()!
        defer { LLVMContextDispose(context) }
        let module = try ModuleEmitter(context: context, name: moduleName).emit(functions)
        defer { LLVMDisposeModule(module) }

        let triple = takeMessage(LLVMGetDefaultTargetTriple()) ?? ""
        let cpu = takeMessage(LLVMGetHostCPUName()) ?? ""
        // A later "-feature" also clears the features that imply it.
        let features = ([takeMessage(LLVMGetHostCPUFeatures()) ?? ""] + disabledFeatures.map { "-" + $0 })
            .filter { !$0.isEmpty }.joined(separator: ",")
        var target: LLVMTargetRef?
        var message: UnsafeMutablePointer<CChar>?
        if LLVMGetTargetFromTriple(triple, &target, &message) != 0 || target == nil {
            throw CodegenError("LLVM has no target for \(triple): \(takeMessage(message) ?? "unknown error")")
        }
        _ = takeMessage(message)
        guard let machine = LLVMCreateTargetMachine(target, triple, cpu, features, LLVMCodeGenLevelAggressive,
                                                    LLVMRelocPIC, LLVMCodeModelDefault) else {
            throw CodegenError("LLVM could not create a target machine for \(triple) (cpu \(cpu))")
        }
        defer { LLVMDisposeTargetMachine(machine) }
        let dataLayout = LLVMCreateTargetDataLayout(machine)
        LLVMSetModuleDataLayout(module, dataLayout)
        LLVMDisposeTargetData(dataLayout)
        LLVMSetTarget(module, triple)

        let options = LLVMCreatePassBuilderOptions()
        defer { LLVMDisposePassBuilderOptions(options) }
        LLVMPassBuilderOptionsSetLoopVectorization(options, 1)
        LLVMPassBuilderOptionsSetSLPVectorization(options, 1)
        LLVMPassBuilderOptionsSetLoopInterleaving(options, 1)
        LLVMPassBuilderOptionsSetLoopUnrolling(options, 1)
        if let error = LLVMRunPasses(module, "default<O3>", machine, options) {
            let text = LLVMGetErrorMessage(error)
            defer { LLVMDisposeErrorMessage(text) }
            throw CodegenError("LLVM optimization failed: \(text.map { String(cString: $0) } ?? "unknown error")")
        }
        try verify(module, stage: "after optimization")
        return try body(module, machine)
    }

    static func verify(_ module: LLVMModuleRef, stage: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        let failed = LLVMVerifyModule(module, LLVMReturnStatusAction, &message)
        let text = takeMessage(message)
        if failed != 0 {
            throw CodegenError("invalid LLVM module \(stage): \(text ?? "unknown error")")
        }
    }

    static func printModule(_ module: LLVMModuleRef) -> String {
        takeMessage(LLVMPrintModuleToString(module)) ?? ""
    }

    /// Copies and frees an LLVM-allocated message.
    static func takeMessage(_ message: UnsafeMutablePointer<CChar>?) -> String? {
        guard let message else { return nil }
        defer { LLVMDisposeMessage(message) }
        return String(cString: message)
    }

    /// The float a C literal rendered by `CEmitter.literal` denotes: `%.9g`
    /// of the double, converted to float (NAN and ±INFINITY as themselves).
    static func floatLiteral(_ v: Double) -> Float {
        if v.isNaN { return .nan }
        if v.isInfinite { return v > 0 ? .infinity : -.infinity }
        return Float(Double(String(format: "%.9g", v)) ?? v)
    }
}

// MARK: - IR generation

/// Builds one LLVM module in a caller-owned context.
private final class ModuleEmitter {
    let context: LLVMContextRef
    let module: LLVMModuleRef
    let builder: LLVMBuilderRef

    let void: LLVMTypeRef, i8: LLVMTypeRef, i32: LLVMTypeRef, i64: LLVMTypeRef
    let f32: LLVMTypeRef, f64: LLVMTypeRef
    let i8Ptr: LLVMTypeRef, i8PtrPtr: LLVMTypeRef
    let buffersType: LLVMTypeRef
    let kernelType: LLVMTypeRef
    let entryType: LLVMTypeRef

    private var declared: [String: (type: LLVMTypeRef, fn: LLVMValueRef)] = [:]
    private var globalCounter = 0
    private var moduleOwned = true

    init(context: LLVMContextRef, name: String) {
        self.context = context
        module = LLVMModuleCreateWithNameInContext(name, context)
        builder = LLVMCreateBuilderInContext(context)
        void = LLVMVoidTypeInContext(context)
        i8 = LLVMInt8TypeInContext(context)
        i32 = LLVMInt32TypeInContext(context)
        i64 = LLVMInt64TypeInContext(context)
        f32 = LLVMFloatTypeInContext(context)
        f64 = LLVMDoubleTypeInContext(context)
        i8Ptr = LLVMPointerType(i8, 0)
        i8PtrPtr = LLVMPointerType(i8Ptr, 0)
        // typedef struct ddp_buffers { char *params; char *state; char *io; char *arena; } ddp_buffers;
        buffersType = LLVMStructCreateNamed(context, "ddp_buffers")
        var fields = [LLVMTypeRef?](repeating: i8Ptr, count: BufferLayout.Region.allCases.count)
        LLVMStructSetBody(buffersType, &fields, UInt32(fields.count), 0)
        // typedef int (*ddp_kernel_fn)(void *const *bufs, const int64_t *ia, const double *fa);
        var kernelParams: [LLVMTypeRef?] = [i8PtrPtr, LLVMPointerType(i64, 0), LLVMPointerType(f64, 0)]
        kernelType = LLVMFunctionType(i32, &kernelParams, 3, 0)
        // int ddp_<name>(const ddp_buffers *b, const ddp_kernel_fn *k)
        var entryParams: [LLVMTypeRef?] = [LLVMPointerType(buffersType, 0), i8PtrPtr]
        entryType = LLVMFunctionType(i32, &entryParams, 2, 0)
    }

    deinit {
        LLVMDisposeBuilder(builder)
        if moduleOwned { LLVMDisposeModule(module) }
    }

    struct LoopKey: Hashable {
        var parallel: Bool
        var shape: [Int]
        var strides: [[Int]]
        var dtypes: [DType]
        var statements: [LoweredFunction.Loop.Statement]
        var resultReads: [Int?]
    }

    /// Loop functions already emitted, by what they compute, and the task
    /// twins (pointers as an array) that the parallel_loop kernel calls.
    private var loopFunctions: [LoopKey: LLVMValueRef] = [:]
    private var loopTasks: [LoopKey: LLVMValueRef] = [:]

    /// Emits every function and verifies the module; the caller owns (and
    /// must dispose) the returned module.
    func emit(_ functions: [LoweredFunction]) throws -> LLVMModuleRef {
        var seen = Set<String>()
        for function in functions {
            guard seen.insert(function.name).inserted else {
                throw CodegenError("two entry points are named @\(function.name)")
            }
            try emit(function)
        }
        try LLVMEmitter.verify(module, stage: "as generated")
        moduleOwned = false
        return module
    }

    // MARK: Helpers

    func constI64(_ v: Int) -> LLVMValueRef { LLVMConstInt(i64, UInt64(bitPattern: Int64(v)), 1) }
    func constI32(_ v: Int) -> LLVMValueRef { LLVMConstInt(i32, UInt64(bitPattern: Int64(v)), 1) }
    func constF32(_ v: Float) -> LLVMValueRef { LLVMConstReal(f32, Double(v)) }

    func functionType(_ result: LLVMTypeRef, _ params: [LLVMTypeRef]) -> LLVMTypeRef {
        var params = params.map { Optional($0) }
        return LLVMFunctionType(result, &params, UInt32(params.count), 0)
    }

    /// A declared external function (libm or an intrinsic), by name.
    func declaration(_ name: String, _ type: LLVMTypeRef, pure: Bool) -> (type: LLVMTypeRef, fn: LLVMValueRef) {
        if let existing = declared[name] { return existing }
        let fn = LLVMAddFunction(module, name, type)!
        if pure {
            // libm's float functions read and write no memory we care about
            // (errno is never read), which lets LLVM hoist and vectorize them.
            for attribute in ["nounwind", "readnone", "willreturn"] {
                let kind = LLVMGetEnumAttributeKindForName(attribute, attribute.utf8.count)
                LLVMAddAttributeAtIndex(fn, LLVMAttributeIndex(bitPattern: -1), LLVMCreateEnumAttribute(context, kind, 0))
            }
        }
        declared[name] = (type, fn)
        return (type, fn)
    }

    func call(_ name: String, _ args: [LLVMValueRef], pure: Bool = true) -> LLVMValueRef {
        let (type, fn) = declaration(name, functionType(f32, args.map { _ in f32 }), pure: pure)
        var args = args.map { Optional($0) }
        return LLVMBuildCall2(builder, type, fn, &args, UInt32(args.count), "")
    }

    func gep(_ type: LLVMTypeRef, _ base: LLVMValueRef, _ indices: [LLVMValueRef], _ name: String = "") -> LLVMValueRef {
        var indices = indices.map { Optional($0) }
        return LLVMBuildInBoundsGEP2(builder, type, base, &indices, UInt32(indices.count), name)
    }

    func llvmType(_ dtype: DType) -> LLVMTypeRef {
        switch dtype {
        case .f32: return f32
        case .f64: return f64
        case .i32: return i32
        case .i64: return i64
        }
    }

    // MARK: Functions

    private final class FunctionState {
        let kernels: LLVMValueRef
        /// Base pointers of the four regions, loaded once in the entry block.
        var bases: [BufferLayout.Region: LLVMValueRef] = [:]
        /// The stack array of buffer pointers shared by every kernel call.
        var bufferArray: LLVMValueRef?
        var bufferArrayType: LLVMTypeRef?
        var loopCounter = 0
        init(kernels: LLVMValueRef) { self.kernels = kernels }
    }

    /// The entry point: a call of each piece of its steps
    /// (`LoweredFunction.pieces`, internal functions) in order, returning the
    /// first failed kernel's status.
    private func emit(_ function: LoweredFunction) throws {
        let pieces = try function.pieces.enumerated().map { index, steps in
            try emitPiece(steps, named: "steps\(index)_of_\(function.name)", function: function.name)
        }
        let fn = LLVMAddFunction(module, "ddp_\(function.name)", entryType)!
        LLVMSetLinkage(fn, LLVMExternalLinkage)
        markNoUnwind(fn)
        var parameters: [LLVMValueRef?] = [LLVMGetParam(fn, 0), LLVMGetParam(fn, 1)]
        LLVMSetValueName2(parameters[0], "b", 1)
        LLVMSetValueName2(parameters[1], "k", 1)
        LLVMPositionBuilderAtEnd(builder, LLVMAppendBasicBlockInContext(context, fn, "entry"))
        for (index, piece) in pieces.enumerated() {
            returnIfFailed(LLVMBuildCall2(builder, entryType, piece, &parameters, 2, "status\(index)")!, label: "steps\(index)")
        }
        LLVMBuildRet(builder, constI32(0))
    }

    /// Returns `status` from the function being built unless it is 0, and
    /// goes on building after the check.
    private func returnIfFailed(_ status: LLVMValueRef, label: String) {
        let function = LLVMGetBasicBlockParent(LLVMGetInsertBlock(builder))!
        let failed = LLVMAppendBasicBlockInContext(context, function, "\(label).failed")!
        let next = LLVMAppendBasicBlockInContext(context, function, "\(label).ok")!
        LLVMBuildCondBr(builder, LLVMBuildICmp(builder, LLVMIntNE, status, constI32(0), ""), failed, next)
        LLVMPositionBuilderAtEnd(builder, failed)
        LLVMBuildRet(builder, status)
        LLVMPositionBuilderAtEnd(builder, next)
    }

    private func markNoUnwind(_ fn: LLVMValueRef) {
        let nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8)
        LLVMAddAttributeAtIndex(fn, LLVMAttributeIndex(bitPattern: -1), LLVMCreateEnumAttribute(context, nounwind, 0))
    }

    /// `internal noinline optnone i32 @<name>(b, k)`: the steps, returning 0
    /// or the first failed kernel's status. A piece only fills argument
    /// arrays and calls kernels and loop functions, so O3 has nothing to gain
    /// in it: without optimizing the pieces TransUNet's LLVM compile takes
    /// 4.0 s instead of 6.3, and the steps run as fast (unet-r18 and
    /// TransUNet, 3 interleaved rounds). The loops keep the O3 pipeline.
    private func emitPiece(_ steps: [LoweredFunction.Step], named name: String, function: String) throws -> LLVMValueRef {
        let fn = LLVMAddFunction(module, name, entryType)!
        LLVMSetLinkage(fn, LLVMInternalLinkage)
        markNoUnwind(fn)
        let noinline = LLVMGetEnumAttributeKindForName("noinline", 8)
        LLVMAddAttributeAtIndex(fn, LLVMAttributeIndex(bitPattern: -1), LLVMCreateEnumAttribute(context, noinline, 0))
        let optnone = LLVMGetEnumAttributeKindForName("optnone", 7) // requires noinline
        LLVMAddAttributeAtIndex(fn, LLVMAttributeIndex(bitPattern: -1), LLVMCreateEnumAttribute(context, optnone, 0))
        let b = LLVMGetParam(fn, 0)!, k = LLVMGetParam(fn, 1)!
        LLVMSetValueName2(b, "b", 1)
        LLVMSetValueName2(k, "k", 1)
        let state = FunctionState(kernels: k)

        let entry = LLVMAppendBasicBlockInContext(context, fn, "entry")
        LLVMPositionBuilderAtEnd(builder, entry)
        for (index, region) in BufferLayout.Region.allCases.enumerated() {
            let field = LLVMBuildStructGEP2(builder, buffersType, b, UInt32(index), "\(region.rawValue).addr")!
            let base = LLVMBuildLoad2(builder, i8Ptr, field, region.rawValue)!
            LLVMSetAlignment(base, 8)
            state.bases[region] = base
        }
        let maxBuffers = steps.reduce(0) { most, step in
            if case .kernel(_, _, let buffers, _, _) = step { return max(most, buffers.count) }
            if case .loop(let loop) = step, loop.parallel { return max(most, loop.results.count + loop.operands.count + 1) }
            return most
        }
        if maxBuffers > 0 {
            let type = LLVMArrayType(i8Ptr, UInt32(maxBuffers))!
            state.bufferArrayType = type
            state.bufferArray = LLVMBuildAlloca(builder, type, "bufs")
        }

        for step in steps {
            switch step {
            case .comment:
                break
            case .kernel(let index, let name, let buffers, let ints, let floats):
                emitKernel(state, function: function, index: index, name: name, buffers: buffers, ints: ints, floats: floats)
            case .copy(let to, let from, let bytes):
                guard bytes > 0 else { continue }
                LLVMBuildMemCpy(builder, bytePointer(state, to), 1, bytePointer(state, from), 1, constI64(bytes))
            case .loop(let loop):
                try emitLoop(state, function: function, loop)
            }
        }
        LLVMBuildRet(builder, constI32(0))
        return fn
    }

    /// `b-><region> + offset` as an i8*.
    private func bytePointer(_ state: FunctionState, _ address: LoweredFunction.Address) -> LLVMValueRef {
        let base = state.bases[address.region]!
        if address.offset == 0 { return base }
        return gep(i8, base, [constI64(address.offset)])
    }

    /// A private constant array global.
    private func constantArray(_ elementType: LLVMTypeRef, _ values: [LLVMValueRef], name: String) -> LLVMValueRef {
        var elements = values.map { Optional($0) }
        let array = LLVMConstArray(elementType, &elements, UInt32(elements.count))!
        let global = LLVMAddGlobal(module, LLVMTypeOf(array), name)!
        LLVMSetInitializer(global, array)
        LLVMSetGlobalConstant(global, 1)
        LLVMSetLinkage(global, LLVMPrivateLinkage)
        LLVMSetUnnamedAddress(global, LLVMGlobalUnnamedAddr)
        LLVMSetAlignment(global, 8)
        return LLVMConstBitCast(global, LLVMPointerType(elementType, 0))
    }

    private func emitKernel(_ state: FunctionState, function: String, index: Int, name: String,
                            buffers: [LoweredFunction.Address], ints: [Int], floats: [Double]) {
        emitKernel(state, function: function, index: index, name: name, pointers: buffers.map { bytePointer(state, $0) },
                   ints: ints, floats: floats)
    }

    /// A kernel call with its buffers given as i8* values.
    private func emitKernel(_ state: FunctionState, function: String, index: Int, name: String,
                            pointers: [LLVMValueRef], ints: [Int], floats: [Double]) {
        globalCounter += 1
        let arrayType = state.bufferArrayType!, array = state.bufferArray!
        for (slot, pointer) in pointers.enumerated() {
            let element = gep(arrayType, array, [constI64(0), constI64(slot)])
            LLVMSetAlignment(LLVMBuildStore(builder, pointer, element), 8)
        }
        let bufs = gep(arrayType, array, [constI64(0), constI64(0)], "bufs.\(name)")
        // `static const int64_t ia[] = {...}` ({0} when there are none).
        let ia = constantArray(i64, (ints.isEmpty ? [0] : ints).map(constI64), name: "ddp_\(function).\(name).ia\(globalCounter)")
        let fa = floats.isEmpty
            ? LLVMConstPointerNull(LLVMPointerType(f64, 0))!
            : constantArray(f64, floats.map { LLVMConstReal(f64, $0) }, name: "ddp_\(function).\(name).fa\(globalCounter)")
        let slot = gep(i8Ptr, state.kernels, [constI64(index)])
        let raw = LLVMBuildLoad2(builder, i8Ptr, slot, "k.\(name)")!
        LLVMSetAlignment(raw, 8)
        let kernel = LLVMBuildBitCast(builder, raw, LLVMPointerType(kernelType, 0), "")!
        var args: [LLVMValueRef?] = [bufs, ia, fa]
        // A failed kernel ends the piece, and the entry point, with its status (the C backend skips the calls after it).
        returnIfFailed(LLVMBuildCall2(builder, kernelType, kernel, &args, 3, "status.\(name)")!, label: name)
    }

    // MARK: Elementwise loops

    /// One pointer of a loop: a parameter of the loop's function.
    private struct LoopPointer {
        var pointer: LLVMValueRef
        var dtype: DType
    }

    /// Emits the loop nest as its own function,
    ///
    ///     internal void @ddp_<name>.loop<n>(T* noalias r0, ..., T* noalias p0, ...)
    ///
    /// and calls it. `noalias` is the C backend's `restrict` (the memory
    /// planner never overlaps a result with a live operand), and one small
    /// function per loop keeps the optimizer's work linear in model size.
    private func emitLoop(_ state: FunctionState, function: String, _ loop: LoweredFunction.Loop) throws {
        guard loop.operandStrides.count == loop.operands.count,
              loop.operandStrides.allSatisfy({ $0.count == loop.shape.count }), !loop.shape.isEmpty else {
            throw CodegenError("malformed loop in @\(function): shape \(loop.shape), strides \(loop.operandStrides)")
        }
        for (k, statement) in loop.statements.enumerated() where statement.expr.inputCount > loop.operands.count + k {
            throw CodegenError("loop in @\(function) computes \(statement.expr) over \(loop.operands.count) operands and \(k) earlier statements")
        }
        if loop.caller == nil, loop.shape.contains(where: { $0 <= 0 }) { return }  // no elements (a caller still runs: a sum of none is 0)

        let addresses = loop.results + loop.operands
        let pointerTypes = addresses.map { LLVMPointerType(llvmType($0.dtype), 0)! }
        // A parallel loop takes the range [begin, end) of its outer axis first.
        let loopType = functionType(void, (loop.parallel ? [i64, i64] : []) + pointerTypes)
        // Loops with the same shape, strides, types and expression share one
        // function (like the C backend), keeping optimization time small.
        let key = LoopKey(parallel: loop.parallel, shape: loop.shape, strides: loop.operandStrides, dtypes: addresses.map(\.dtype),
                          statements: loop.statements, resultReads: loop.operands.indices.map(loop.resultRead(byOperand:)))
        let loopFunction: LLVMValueRef
        if let shared = loopFunctions[key] {
            loopFunction = shared
        } else {
            state.loopCounter += 1
            loopFunction = try emitLoopFunction(name: "ddp_\(function).loop\(state.loopCounter)", type: loopType,
                                                loop: loop, addresses: addresses)
            loopFunctions[key] = loopFunction
        }
        // The call, in the entry point: inline, or through the loop's task
        // twin by the parallel_loop kernel (split over the pool) or the
        // loop's own caller (a fused reduction's kernel).
        if loop.parallel {
            let task = loopTasks[key] ?? emitLoopTask(loopFunction, type: loopType, pointerTypes: pointerTypes)
            loopTasks[key] = task
            let caller = loop.caller ?? .init(index: LoweredFunction.parallelLoopKernel, name: "parallel_loop", ints: [loop.shape[0]])
            emitKernel(state, function: function, index: caller.index, name: caller.name,
                       pointers: [LLVMBuildBitCast(builder, task, i8Ptr, "")!] + addresses.map { bytePointer(state, $0) },
                       ints: caller.ints, floats: [])
        } else {
            var arguments: [LLVMValueRef?] = zip(addresses, pointerTypes).map { address, type in
                LLVMBuildBitCast(builder, bytePointer(state, address), type, "")
            }
            LLVMBuildCall2(builder, loopType, loopFunction, &arguments, UInt32(arguments.count), "")
        }
    }

    /// `internal void @<loop>.task(i64 begin, i64 end, i8** p)`: the loop with
    /// its pointers taken from an array (the ddp_loop_fn form).
    private func emitLoopTask(_ loopFunction: LLVMValueRef, type loopType: LLVMTypeRef, pointerTypes: [LLVMTypeRef]) -> LLVMValueRef {
        let caller = LLVMGetInsertBlock(builder)!
        var length = 0
        let name = String(cString: LLVMGetValueName2(loopFunction, &length)) + ".task"
        let task = LLVMAddFunction(module, name, functionType(void, [i64, i64, i8PtrPtr]))!
        LLVMSetLinkage(task, LLVMInternalLinkage)
        LLVMPositionBuilderAtEnd(builder, LLVMAppendBasicBlockInContext(context, task, "entry"))
        let array = LLVMGetParam(task, 2)!
        var arguments: [LLVMValueRef?] = [LLVMGetParam(task, 0), LLVMGetParam(task, 1)]
        for (slot, type) in pointerTypes.enumerated() {
            let raw = LLVMBuildLoad2(builder, i8Ptr, gep(i8Ptr, array, [constI64(slot)]), "p\(slot)")!
            LLVMSetAlignment(raw, 8)
            arguments.append(LLVMBuildBitCast(builder, raw, type, ""))
        }
        LLVMBuildCall2(builder, loopType, loopFunction, &arguments, UInt32(arguments.count), "")
        LLVMBuildRetVoid(builder)
        LLVMPositionBuilderAtEnd(builder, caller)
        return task
    }

    /// The loop nest as `internal void @<name>(T* noalias r0, ..., T* noalias p0, ...)`;
    /// a parallel loop takes `i64 begin, i64 end` first and covers rows
    /// [begin, end) of its outermost axis.
    private func emitLoopFunction(name: String, type loopType: LLVMTypeRef, loop: LoweredFunction.Loop,
                                  addresses: [LoweredFunction.Address]) throws -> LLVMValueRef {
        let loopFunction = LLVMAddFunction(module, name, loopType)!
        LLVMSetLinkage(loopFunction, LLVMInternalLinkage)
        for attribute in ["nounwind", "noinline"] {
            let kind = LLVMGetEnumAttributeKindForName(attribute, attribute.utf8.count)
            LLVMAddAttributeAtIndex(loopFunction, LLVMAttributeIndex(bitPattern: -1), LLVMCreateEnumAttribute(context, kind, 0))
        }
        let noalias = LLVMGetEnumAttributeKindForName("noalias", 7)
        let nocapture = LLVMGetEnumAttributeKindForName("nocapture", 9)
        let readonly = LLVMGetEnumAttributeKindForName("readonly", 8)
        let bounds: Int = loop.parallel ? 2 : 0 // begin, end come first
        if loop.parallel {
            LLVMSetValueName2(LLVMGetParam(loopFunction, 0), "begin", 5)
            LLVMSetValueName2(LLVMGetParam(loopFunction, 1), "end", 3)
        }
        let resultCount = loop.results.count
        for index in addresses.indices {
            let attributes = index < resultCount ? [noalias, nocapture] : [noalias, nocapture, readonly]
            for kind in attributes {
                LLVMAddAttributeAtIndex(loopFunction, LLVMAttributeIndex(bounds + index + 1), LLVMCreateEnumAttribute(context, kind, 0))
            }
            let name = index < resultCount ? "r\(index)" : "p\(index - resultCount)"
            LLVMSetValueName2(LLVMGetParam(loopFunction, UInt32(bounds + index)), name, name.utf8.count)
        }
        let caller = LLVMGetInsertBlock(builder)!

        // The body; a range may be empty, and the nest tests at its end.
        let entry = LLVMAppendBasicBlockInContext(context, loopFunction, "entry")
        let nest = LLVMAppendBasicBlockInContext(context, loopFunction, "nest")
        let done = LLVMAppendBasicBlockInContext(context, loopFunction, "done")
        LLVMPositionBuilderAtEnd(builder, entry)
        var range: (begin: LLVMValueRef, end: LLVMValueRef)?
        if loop.parallel {
            let begin = LLVMGetParam(loopFunction, 0)!, end = LLVMGetParam(loopFunction, 1)!
            LLVMBuildCondBr(builder, LLVMBuildICmp(builder, LLVMIntSLT, begin, end, ""), nest, done)
            range = (begin, end)
        } else {
            LLVMBuildBr(builder, nest)
        }
        LLVMPositionBuilderAtEnd(builder, nest)
        let pointers = addresses.enumerated().map { index, address in
            LoopPointer(pointer: LLVMGetParam(loopFunction, UInt32(bounds + index))!, dtype: address.dtype)
        }
        // An operand that is a result's own storage is read through that result's pointer.
        let resultPointers = Array(pointers.prefix(resultCount))
        let operandPointers = pointers.dropFirst(resultCount).enumerated().map { k, pointer in
            loop.resultRead(byOperand: k).map { resultPointers[$0] } ?? pointer
        }
        emitNest(loopFunction, loop, depth: 0, flat: nil, offsets: loop.operands.map { _ in nil },
                 results: resultPointers, operands: operandPointers, outerRange: range)
        LLVMBuildBr(builder, done)
        LLVMPositionBuilderAtEnd(builder, done)
        LLVMBuildRetVoid(builder)
        LLVMPositionBuilderAtEnd(builder, caller)
        return loopFunction
    }

    /// The loop over axis `depth`; `flat` and `offsets` are the outer axes'
    /// contributions (nil: zero). Leaves the builder in the exit block.
    private func emitNest(_ fn: LLVMValueRef, _ loop: LoweredFunction.Loop, depth: Int,
                          flat outerFlat: LLVMValueRef?, offsets outerOffsets: [LLVMValueRef?],
                          results: [LoopPointer], operands: [LoopPointer],
                          outerRange: (begin: LLVMValueRef, end: LLVMValueRef)? = nil) {
        let extent = loop.shape[depth]
        // The outermost axis runs over [begin, end), the others over [0, extent).
        let first = outerRange?.begin ?? constI64(0), bound = outerRange?.end ?? constI64(extent)
        let preheader = LLVMGetInsertBlock(builder)!
        let header = LLVMAppendBasicBlockInContext(context, fn, "d\(depth)")!
        let exit = LLVMAppendBasicBlockInContext(context, fn, "d\(depth).end")!
        LLVMBuildBr(builder, header)
        LLVMPositionBuilderAtEnd(builder, header)
        let i = LLVMBuildPhi(builder, i64, "i\(depth)")!

        // flat = outer * extent + i  (C: ((i0) * s1 + i1) * s2 + i2 ...)
        let flat = outerFlat.map { LLVMBuildNSWAdd(builder, LLVMBuildNSWMul(builder, $0, constI64(extent), "")!, i, "")! } ?? i
        // operand index = Σ i_d * stride_d
        let offsets: [LLVMValueRef?] = loop.operandStrides.enumerated().map { k, strides in
            let stride = strides[depth]
            guard stride != 0 else { return outerOffsets[k] }
            let term = stride == 1 ? i : LLVMBuildNSWMul(builder, i, constI64(stride), "")!
            return outerOffsets[k].map { LLVMBuildNSWAdd(builder, $0, term, "")! } ?? term
        }

        if depth == loop.shape.count - 1 {
            // Every operand first, then the statements in order, each seeing the earlier ones' values.
            var values = operands.enumerated().map { k, operand in
                load(operand, index: offsets[k] ?? constI64(0), name: "x\(k)")
            }
            for statement in loop.statements {
                let value = expression(statement.expr, values)
                if let result = statement.result { store(value, to: results[result], index: flat) }
                values.append(value)
            }
        } else {
            emitNest(fn, loop, depth: depth + 1, flat: flat, offsets: offsets, results: results, operands: operands)
        }

        let latch = LLVMGetInsertBlock(builder)!
        let next = LLVMBuildNSWAdd(builder, i, constI64(1), "i\(depth).next")!
        let done = LLVMBuildICmp(builder, LLVMIntEQ, next, bound, "")
        LLVMBuildCondBr(builder, done, exit, header)
        var incoming: [LLVMValueRef?] = [first, next]
        var blocks: [LLVMBasicBlockRef?] = [preheader, latch]
        LLVMAddIncoming(i, &incoming, &blocks, 2)
        LLVMPositionBuilderAtEnd(builder, exit)
    }

    /// Loads one element as float (the C backend reads every operand as float).
    private func load(_ operand: LoopPointer, index: LLVMValueRef, name: String) -> LLVMValueRef {
        let type = llvmType(operand.dtype)
        let address = gep(type, operand.pointer, [index])
        let value = LLVMBuildLoad2(builder, type, address, name)!
        LLVMSetAlignment(value, UInt32(operand.dtype.byteSize))
        switch operand.dtype {
        case .f32: return value
        case .f64: return LLVMBuildFPTrunc(builder, value, f32, "")
        case .i32, .i64: return LLVMBuildSIToFP(builder, value, f32, "")
        }
    }

    private func store(_ value: LLVMValueRef, to result: LoopPointer, index: LLVMValueRef) {
        let type = llvmType(result.dtype)
        let address = gep(type, result.pointer, [index])
        let converted: LLVMValueRef
        switch result.dtype {
        case .f32: converted = value
        case .f64: converted = LLVMBuildFPExt(builder, value, f64, "")
        case .i32, .i64: converted = LLVMBuildFPToSI(builder, value, type, "")
        }
        let store = LLVMBuildStore(builder, converted, address)!
        LLVMSetAlignment(store, UInt32(result.dtype.byteSize))
    }

    /// The scalar expression in float, as `CEmitter.render` writes it in C.
    private func expression(_ expr: ScalarExpr, _ inputs: [LLVMValueRef]) -> LLVMValueRef {
        switch expr {
        case .input(let i):
            return inputs[i]
        case .const(let v):
            return constF32(LLVMEmitter.floatLiteral(v))
        case .unary(let fn, let a):
            let x = expression(a, inputs)
            switch fn {
            case .neg: return LLVMBuildFNeg(builder, x, "")
            case .exp: return exponential(x)
            case .log: return call("logf", [x])
            case .sqrt: return call("llvm.sqrt.f32", [x])
            case .rsqrt: return LLVMBuildFDiv(builder, constF32(1), call("llvm.sqrt.f32", [x]), "")
            case .tanh: return call("tanhf", [x])
            case .erf: return call("erff", [x])
            case .abs: return call("llvm.fabs.f32", [x])
            case .sigmoid:
                // 1.0f / (1.0f + expf(-x))
                let e = exponential(LLVMBuildFNeg(builder, x, ""))
                return LLVMBuildFDiv(builder, constF32(1), LLVMBuildFAdd(builder, constF32(1), e, ""), "")
            case .recip: return LLVMBuildFDiv(builder, constF32(1), x, "")
            }
        case .binary(let fn, let a, let b):
            let x = expression(a, inputs), y = expression(b, inputs)
            switch fn {
            case .add: return LLVMBuildFAdd(builder, x, y, "")
            case .sub: return LLVMBuildFSub(builder, x, y, "")
            case .mul: return LLVMBuildFMul(builder, x, y, "")
            case .div: return LLVMBuildFDiv(builder, x, y, "")
            case .max: return extremum(LLVMRealOGE, x, y)
            case .min: return extremum(LLVMRealOLE, x, y)
            case .pow: return call("powf", [x, y])
            case .gt: return flag(LLVMRealOGT, x, y)
            case .ge: return flag(LLVMRealOGE, x, y)
            case .eq: return flag(LLVMRealOEQ, x, y)
            }
        case .select(let c, let a, let b):
            // (c > 0.0f ? a : b); both sides are pure, so evaluating both is exact.
            let condition = LLVMBuildFCmp(builder, LLVMRealOGT, expression(c, inputs), constF32(0), "")
            return LLVMBuildSelect(builder, condition, expression(a, inputs), expression(b, inputs), "")
        }
    }

    /// e^x as the C backend's ddp_expf computes it, operation for operation
    /// (Cephes' reduction and polynomial, 2^n in the exponent bits): plain
    /// arithmetic, so the loop vectorizes, where a call to expf would not.
    private func exponential(_ input: LLVMValueRef) -> LLVMValueRef {
        func mul(_ a: LLVMValueRef, _ b: LLVMValueRef) -> LLVMValueRef { LLVMBuildFMul(builder, a, b, "")! }
        func add(_ a: LLVMValueRef, _ b: LLVMValueRef) -> LLVMValueRef { LLVMBuildFAdd(builder, a, b, "")! }
        let low = constF32(-87.33654), high = constF32(88.0), magic = constF32(12582912.0)
        var x = LLVMBuildSelect(builder, LLVMBuildFCmp(builder, LLVMRealOLT, input, low, ""), low, input, "")!
        x = LLVMBuildSelect(builder, LLVMBuildFCmp(builder, LLVMRealOGT, x, high, ""), high, x, "")!
        let shifted = add(mul(x, constF32(1.44269504088896341)), magic)
        let n = LLVMBuildFSub(builder, shifted, magic, "")!
        var r = LLVMBuildFSub(builder, x, mul(n, constF32(0.693359375)), "")!
        r = add(r, mul(n, constF32(2.12194440e-4)))
        var p = constF32(1.9875691500e-4)
        for c: Float in [1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1] {
            p = add(mul(p, r), constF32(c))
        }
        p = add(add(mul(mul(p, r), r), r), constF32(1))
        let bits = LLVMBuildBitCast(builder, shifted, i32, "")!
        let exponent = LLVMBuildShl(builder, LLVMBuildAdd(builder, bits, constI32(-0x4B40_0000 + 127), ""), constI32(23), "")!
        return mul(p, LLVMBuildBitCast(builder, exponent, f32, "")!)
    }

    /// fmaxf (`OGE`) or fminf (`OLE`) as the C backend's ddp_fmaxf/ddp_fminf
    /// select it: `x != x ? y : ((x <op> y) | (y != y)) ? x : y`.
    private func extremum(_ predicate: LLVMRealPredicate, _ x: LLVMValueRef, _ y: LLVMValueRef) -> LLVMValueRef {
        let keepX = LLVMBuildOr(builder, LLVMBuildFCmp(builder, predicate, x, y, ""), LLVMBuildFCmp(builder, LLVMRealUNO, y, y, ""), "")
        let chosen = LLVMBuildSelect(builder, keepX, x, y, "")
        return LLVMBuildSelect(builder, LLVMBuildFCmp(builder, LLVMRealUNO, x, x, ""), y, chosen, "")!
    }

    /// `(x <op> y ? 1.0f : 0.0f)`
    private func flag(_ predicate: LLVMRealPredicate, _ x: LLVMValueRef, _ y: LLVMValueRef) -> LLVMValueRef {
        LLVMBuildSelect(builder, LLVMBuildFCmp(builder, predicate, x, y, ""), constF32(1), constF32(0), "")
    }
}
