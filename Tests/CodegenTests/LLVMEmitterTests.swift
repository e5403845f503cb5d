import ABI
import Codegen
import DDPKernels
import Foundation
import IR
import Passes
import XCTest

/// The LLVM backend against the C backend (same lowered program, so the
/// results must agree to float rounding) and against the f64 interpreter.
final class LLVMEmitterTests: XCTestCase {
    // MARK: - Models

    /// conv2d + broadcast bias + relu (fused), a full reduce_sum and a scalar op.
    func testConvBiasReluSum() throws {
        let b = FunctionBuilder(name: "conv")
        let x = b.argument("x", .f32([2, 3, 7, 6]), role: .input)
        let w = b.argument("w", .f32([4, 3, 3, 3]), role: .param)
        let bias = b.argument("bias", .f32([4, 1, 1]), role: .param)
        let y = try b.conv2d(x, w, pad: 1)
        let z = try b.unary("relu", try b.add(y, bias))
        let s = try b.sum(z, axes: [0, 1, 2, 3])
        b.output(z, name: "z")
        b.output(try b.mul(s, try b.constant(0.5)), name: "half_sum")
        b.output(try b.mean(z, axes: [1], keepDims: true), name: "channel_mean")
        let result = try check(Module(functions: [b.function]), name: "conv")
        // The relu loop is simple enough that O3 must vectorize it.
        XCTAssertTrue(result.ir.contains("x float>"), "no vector code in the optimized module")
    }

    /// A fused chain with gelu and select whose operands broadcast along
    /// non-contiguous axes, and an unfused broadcast.
    func testFusedChainWithBroadcasts() throws {
        let b = FunctionBuilder(name: "chain")
        let x = b.argument("x", .f32([2, 3, 4, 5]), role: .input)
        let a = b.argument("a", .f32([3, 1, 5]), role: .param)
        let c = b.argument("c", .f32([2, 1, 4, 1]), role: .param)
        let t = try b.unary("gelu", try b.mul(x, a))
        let u = try b.select(c, t, try b.sub(x, a))
        let v = try b.add(try b.mul(u, try b.constant(0.5)), try b.unary("tanh", x))
        b.output(v, name: "v")
        b.output(try b.broadcast(a, to: [2, 3, 4, 5]), name: "a_broadcast")
        // Operands broadcasting against each other: [2,1,4,1] ⊕ [3,1,5] → [2,3,4,5].
        b.output(try b.unary("sigmoid", try b.mul(c, a)), name: "outer")
        let result = try check(Module(functions: [b.function]), name: "chain")
        XCTAssertTrue(result.planned.functions[0].nodes.contains { $0.op == "fused_elementwise" })
    }

    /// Loops large enough to split over the thread pool (the parallel_loop
    /// kernel calls each backend's task twin of the loop on row ranges) give
    /// the interpreter's values, also with a broadcast operand that makes the
    /// outer axis short.
    func testLargeLoopsRunOnTheThreadPool() throws {
        let b = FunctionBuilder(name: "wide")
        let x = b.argument("x", .f32([64, 1024]), role: .input)
        let y = b.argument("y", .f32([8, 16, 512]), role: .input)
        let a = b.argument("a", .f32([16, 1]), role: .param)
        b.output(try b.add(try b.unary("tanh", x), try b.constant(0.5)), name: "flat")
        b.output(try b.mul(try b.unary("exp", y), a), name: "per_row")
        let result = try check(Module(functions: [b.function]), name: "wide")
        XCTAssertTrue(result.ir.contains("define internal void @ddp_wide.loop1.task(i64 %0, i64 %1, i8**"), result.ir)
        XCTAssertTrue(result.ir.contains("@ddp_wide.loop2.task"), result.ir)
        XCTAssertTrue(result.ir.contains("@ddp_wide.parallel_loop.ia"), result.ir)
    }

    /// Every scalar function, each in its own loop, over an odd length (vector
    /// remainders) with one broadcast operand; inputs on a 0.25 grid so that
    /// comparisons tie.
    func testEveryScalarFunction() throws {
        let b = FunctionBuilder(name: "scalars")
        let x = b.argument("x", .f32([3, 37]), role: .input)
        let p = b.argument("p", .f32([3, 37]), role: .input)
        let y = b.argument("y", .f32([37]), role: .input)
        let expressions = [
            "neg(in0)", "exp(in0)", "log(in1)", "sqrt(in1)", "rsqrt(in1)", "tanh(in0)", "erf(in0)", "abs(in0)",
            "sigmoid(in0)", "recip(in1)",
            "add(in0, in2)", "sub(in0, in2)", "mul(in0, in2)", "div(in0, in1)", "max(in0, in2)", "min(in0, in2)",
            "pow(in1, in2)", "gt(in0, in2)", "ge(in0, in2)", "eq(in0, in2)",
            "select(in0, in1, in2)", "select(sub(in0, in2), exp(in2), neg(in1))",
            "add(mul(in0, 0.1), 3.0)", "mul(in0, 1e-3)",
        ]
        for (i, text) in expressions.enumerated() {
            let r = try b.emit("fused_elementwise", [x, p, y], ["expr": .expr(try ScalarExpr.parse(text))])
            b.output(r, name: "e\(i)")
        }
        let grid: (inout SplitMix, TensorType) -> HostTensor = { rng, type in
            HostTensor(type, (0..<type.count).map { _ in Double(Int(rng.next() % 9) - 4) * 0.25 })
        }
        var rng = SplitMix(seed: 7)
        let inputs = ["x": grid(&rng, .f32([3, 37])), "y": grid(&rng, .f32([37])),
                      "p": HostTensor(.f32([3, 37]), (0..<111).map { _ in rng.uniform(0.5, 2) })]
        try check(Module(functions: [b.function]), name: "scalars", arguments: inputs)
    }

    /// matmul (shared and transposed b), reshape (an alias) and softmax.
    func testMatmulSoftmax() throws {
        let b = FunctionBuilder(name: "attn")
        let q = b.argument("q", .f32([2, 3, 8]), role: .input)
        let wk = b.argument("wk", .f32([8, 5]), role: .param)
        let k = b.argument("k", .f32([2, 6, 8]), role: .input)
        let scores = try b.matmul(q, k, transposeB: true)  // [2,3,6]
        let probs = try b.emit("softmax", [scores], ["axis": .int(-1)])
        b.output(probs, name: "probs")
        let proj = try b.matmul(q, wk)  // [2,3,5]
        let flat = try b.reshape(proj, [6, 5])
        b.output(try b.emit("softmax", [flat], ["axis": .int(0)]), name: "column_softmax")
        b.output(try b.emit("log_softmax", [try b.mul(flat, try b.constant(2))], ["axis": .int(1)]), name: "log_probs")
        try check(Module(functions: [b.function]), name: "attn")
    }

    /// Kernels with float arguments (eps, a fill value) and six buffers.
    func testNormalizationAndPadding() throws {
        let b = FunctionBuilder(name: "norms")
        let x = b.argument("x", .f32([2, 3, 4, 5]), role: .input)
        let gamma = b.argument("gamma", .f32([5]), role: .param)
        let beta = b.argument("beta", .f32([5]), role: .param)
        let mean = b.argument("mean", .f32([3]), role: .state)
        let variance = b.argument("var", .f32([3]), role: .state)
        let g3 = b.argument("g3", .f32([3]), role: .param)
        let b3 = b.argument("b3", .f32([3]), role: .param)
        b.output(try b.emit("layer_norm", [x, gamma, beta], ["eps": .float(1e-3)]), name: "ln")
        let shifted = try b.add(try b.mul(variance, variance), try b.constant(0.5))
        b.output(try b.emit("batch_norm", [x, mean, shifted, g3, b3], ["eps": .float(1e-5)]), name: "bn")
        b.output(try b.pad(x, low: [0, 1, 0, 2], high: [1, 0, 2, 0], value: -2.5), name: "padded")
        try check(Module(functions: [b.function]), name: "norms")
    }

    /// Two entry points sharing a weight; the second updates a weight and a
    /// state buffer (copies into the params and state regions).
    func testEntryPointsAndUpdates() throws {
        let f = FunctionBuilder(name: "forward")
        let fx = f.argument("x", .f32([3, 4]), role: .input)
        let fw = f.argument("w", .f32([4]), role: .param)
        f.output(try f.mul(fx, fw), name: "y")

        let s = FunctionBuilder(name: "step")
        let w = s.argument("w", .f32([4]), role: .param)
        let m = s.argument("m", .f32([4]), role: .state)
        let g = s.argument("g", .f32([4]), role: .input)
        let m2 = try s.add(try s.mul(m, try s.constant(0.9)), try s.mul(g, try s.constant(0.1)))
        let w2 = try s.sub(w, try s.mul(m2, try s.constant(0.5)))
        s.update(m, with: m2)
        s.update(w, with: w2)
        s.output(try s.sum(w2, axes: [0]), name: "w_sum")
        try check(Module(functions: [f.function, s.function]), name: "twoentries")
    }

    /// An optimizer-like step grouped into one loop (group-loops): moments
    /// and weight updated in place, the regularised gradient kept in a
    /// register; inline and split over the pool (40000 elements).
    func testLoopGroupsComputeTheirNodesInOneLoop() throws {
        for count in [12, 40_000] {
            let s = FunctionBuilder(name: "adam")
            let w = s.argument("w", .f32([count]), role: .param)
            let m = s.argument("m", .f32([count]), role: .state)
            let v = s.argument("v", .f32([count]), role: .state)
            let g = s.argument("g", .f32([count]), role: .input)
            let lr = s.argument("lr", .f32([]), role: .input)
            let regularised = try s.add(g, try s.mul(w, try s.constant(0.01)))
            let m2 = try s.add(try s.mul(m, try s.constant(0.9)), try s.mul(regularised, try s.constant(0.1)))
            let v2 = try s.add(try s.mul(v, try s.constant(0.999)), try s.mul(try s.mul(regularised, regularised), try s.constant(0.001)))
            let step = try s.div(m2, try s.add(try s.unary("sqrt", v2), try s.constant(1e-8)))
            let w2 = try s.sub(w, try s.mul(step, lr))
            s.update(m, with: m2)
            s.update(v, with: v2)
            s.update(w, with: w2)
            s.output(try s.sum(w2, axes: [0]), name: "w_sum")
            let checked = try check(Module(functions: [s.function]), name: "adam\(count)",
                                    passes: [FuseElementwise(), DCE(), GroupLoops(), PlanMemory()])
            XCTAssertTrue(checked.ir.contains("float* noalias nocapture %r2"), "one loop writes three results")
        }
    }

    /// Loops whose results plan-memory places over a dead operand of the
    /// same shape (reading it through the result's pointer, so no two
    /// `restrict`/`noalias` pointers alias) compute what the interpreter does.
    func testLoopsWrittenOverTheirOperandsComputeTheSame() throws {
        let module = try Parser.parse("""
            func @f(%0: f32[2,3,5,7] input "x", %1: f32[1,3,1,1] input "s") {
              %2 = exp(%0) : f32[2,3,5,7]
              %3 = mul(%1, %2) : f32[2,3,5,7]
              %4 = neg(%3) : f32[2,3,5,7]
              %5 = add(%4, %3) : f32[2,3,5,7]
              %6 = mul(%5, %5) : f32[2,3,5,7]
              return %6 as "y"
            }
            """)
        let checked = try check(module, name: "overwrite", passes: [PlanMemory()])
        let byID = Dictionary(uniqueKeysWithValues: checked.planned.functions[0].nodes.map { ($0.id, $0) })
        XCTAssertEqual(byID[3]!.arenaOffset, byID[2]!.arenaOffset, "%3 over %2")
        XCTAssertEqual(byID[5]!.arenaOffset, byID[4]!.arenaOffset, "%5 over %4, its first operand")
        XCTAssertEqual(byID[6]!.arenaOffset, byID[5]!.arenaOffset, "%6 over %5, read twice")
    }

    /// A Winograd convolution writes its result over a residual or a ReLU
    /// gate of its own shape that nothing reads after it (it reads each of
    /// their elements as it stores that output, from accumulators of its
    /// own), forward and input gradient; an im2col one, which applies the
    /// epilogue to what its GEMM already wrote, does not. All compute what
    /// the interpreter does.
    func testWinogradConvolutionsWriteOverTheResidualOrGateTheyRead() throws {
        let module = try Parser.parse("""
            func @f(%0: f32[2,6,9,8] input "x", %1: f32[6,6,3,3] param "w", %2: f32[2,6,9,8] input "g") {
              %3 = neg(%0) : f32[2,6,9,8]
              %4 = fused_conv2d(%0, %1, %3) {algorithm="winograd4", epilogue=max(add(in0, in1), 0.0), pad=[1,1]} : f32[2,6,9,8]
              %5 = neg(%2) : f32[2,6,9,8]
              %6 = fused_conv2d_grad_input(%4, %1, %5) {algorithm="winograd2", epilogue=mul(in0, gt(in1, 0.0)), input_shape=[2,6,9,8], pad=[1,1]} : f32[2,6,9,8]
              %7 = neg(%6) : f32[2,6,9,8]
              %8 = fused_conv2d(%7, %1, %6) {epilogue=add(in0, in1), pad=[1,1]} : f32[2,6,9,8]
              return %8 as "y"
            }
            """)
        let checked = try check(module, name: "winograd_over", passes: [PlanMemory()])
        let byID = Dictionary(uniqueKeysWithValues: checked.planned.functions[0].nodes.map { ($0.id, $0) })
        XCTAssertEqual(byID[4]!.arenaOffset, byID[3]!.arenaOffset, "the forward over its residual")
        XCTAssertEqual(byID[6]!.arenaOffset, byID[5]!.arenaOffset, "the input gradient over its gate")
        XCTAssertNotEqual(byID[8]!.arenaOffset, byID[6]!.arenaOffset, "an im2col convolution keeps its own buffer")
    }

    /// Winograd kernels borrow their weights scratch from the arena, lent
    /// for each call (plan-memory sized it for every ISA: no request misses),
    /// and compute what the interpreter does; an input gradient taken back
    /// through an upsampling borrows its image's block there too.
    func testWinogradKernelsBorrowTheirScratchFromTheArena() throws {
        let module = try Parser.parse("""
            func @f(%0: f32[2,16,12,12] input "x", %1: f32[20,16,3,3] param "w", %2: f32[2,20,12,12] input "g") {
              %3 = conv2d(%0, %1) {algorithm="winograd4", pad=[1,1]} : f32[2,20,12,12]
              %4 = conv2d_grad_input(%2, %1) {algorithm="winograd4", input_shape=[2,16,12,12], pad=[1,1]} : f32[2,16,12,12]
              %5 = conv2d_grad_weight(%0, %2) {algorithm="winograd2", pad=[1,1], weight_shape=[20,16,3,3]} : f32[20,16,3,3]
              %6 = fused_conv2d_grad_input(%2, %1) {algorithm="winograd4", epilogue=in0, input_gather=[2,3,0], input_gather_upsample="bilinear_align_corners", input_shape=[2,16,12,12], pad=[1,1]} : f32[2,16,6,4]
              return %3 as "y", %4 as "dx", %5 as "dw", %6 as "dsource"
            }
            """)
        let misses = ddp_scratch_loan_misses()
        let checked = try check(module, name: "winograd", passes: [PlanMemory()])
        XCTAssertEqual(ddp_scratch_loan_misses(), misses, "every request fit its loan")
        let planned = checked.planned.functions[0]
        XCTAssertEqual(planned.nodes.filter { $0.scratchOffset != nil }.count, 4)
        let lowered = try Lowerer.lower(planned, layout: try BufferLayout(module: checked.planned))
        XCTAssertEqual(lowered.kernelCalls.filter { $0.kernel == "lend_scratch" }.count, 8, "lent before each call, taken back after")
    }

    /// Convolutions before a large buffer is made borrow their per-thread
    /// scratch (columns, Winograd blocks, GEMM packing) from the arena it
    /// will take, one part per thread, and compute what the interpreter does.
    func testKernelsBorrowPerThreadScratchFromTheArenaFreeDuringTheirCall() throws {
        let module = try Parser.parse("""
            func @f(%0: f32[2,16,24,24] input "x", %1: f32[16,16,3,3] param "w", %2: f32[2,16,24,24] input "g", %6: f32[1024,1024] input "z") {
              %3 = conv2d(%0, %1) {pad=[1,1]} : f32[2,16,24,24]
              %4 = conv2d(%3, %1) {algorithm="winograd2", pad=[1,1]} : f32[2,16,24,24]
              %5 = conv2d_grad_weight(%0, %2) {pad=[1,1], weight_shape=[16,16,3,3]} : f32[16,16,3,3]
              %7 = exp(%6) : f32[1024,1024]
              %8 = reduce_sum(%7) {axes=[0,1]} : f32[]
              return %4 as "y", %5 as "dw", %8 as "s"
            }
            """)
        // Two parts of the 4 MB lent (more threads would split it thinner than the GEMM's packing).
        let threads = ddp_parallel_threads()
        ddp_set_thread_limit(2)
        defer { ddp_set_thread_limit(threads) }
        var served: Int64 = 0, missed: Int64 = 0
        ddp_thread_scratch_loan_counts(&served, &missed)
        let checked = try check(module, name: "spare", passes: [PlanMemory()])
        var servedAfter: Int64 = 0, missedAfter: Int64 = 0
        ddp_thread_scratch_loan_counts(&servedAfter, &missedAfter)
        XCTAssertGreaterThan(servedAfter, served, "the loans served requests")
        XCTAssertEqual(missedAfter, missed, "every request fit its thread's part")
        let planned = checked.planned.functions[0]
        XCTAssertEqual(planned.nodes.filter { $0.spare != nil }.map(\.id), [3, 4, 5])
        XCTAssertTrue(Printer.print(planned).contains("spare @"))
        let lowered = try Lowerer.lower(planned, layout: try BufferLayout(module: checked.planned))
        XCTAssertEqual(lowered.kernelCalls.filter { $0.kernel == "lend_thread_scratch" }.count, 6, "lent before each call, taken back after")
    }

    func testIROutputAndLinkErrors() throws {
        let b = FunctionBuilder(name: "tiny")
        let x = b.argument("x", .f32([16]), role: .input)
        b.output(try b.unary("exp", x), name: "y")
        var module = Module(functions: [b.function])
        try PassManager([FuseElementwise(), DCE(), PlanMemory()]).run(&module)
        let layout = try BufferLayout(module: module)
        let lowered = try module.functions.map { try Lowerer.lower($0, layout: layout) }
        let raw = try LLVMEmitter.moduleIR(lowered, moduleName: "tiny", optimize: false)
        XCTAssertTrue(raw.contains("define i32 @ddp_tiny(%ddp_buffers* %b, i8** %k)"), raw)
        XCTAssertTrue(raw.contains("define internal void @ddp_tiny.loop1(float* noalias nocapture %r0, float* noalias nocapture readonly %p0)"), raw)
        XCTAssertFalse(raw.contains(".task"), "a 16-element loop runs inline")
        let optimized = try LLVMEmitter.optimizedIR(lowered, moduleName: "tiny")
        XCTAssertTrue(optimized.contains("target triple"), optimized)

        let dir = try temporaryDirectory()
        let bogus = dir.appendingPathComponent("bogus.o")
        try Data("not an object".utf8).write(to: bogus)
        XCTAssertThrowsError(try LLVMEmitter.linkSharedLibrary(objects: [bogus], output: dir.appendingPathComponent("x.so"))) {
            XCTAssertTrue("\($0)".contains("bogus.o"), "\($0)")
        }
    }

    // MARK: - Harness

    struct Checked {
        var planned: Module
        var ir: String
    }

    /// Plans and lowers `module`, compiles it with both backends, runs every
    /// entry point on the same data and compares the backends with each
    /// other and with the f64 interpreter (on the unplanned functions).
    @discardableResult
    func check(_ module: Module, name: String, arguments given: [String: HostTensor] = [:],
               passes: [any Pass] = [FuseElementwise(), DCE(), PlanMemory()]) throws -> Checked {
        var planned = module
        try PassManager(passes).run(&planned)
        let layout = try BufferLayout(module: planned)
        let lowered = try planned.functions.map { try Lowerer.lower($0, layout: layout) }

        let dir = try temporaryDirectory()
        let cSource = dir.appendingPathComponent("c.c"), cLibrary = dir.appendingPathComponent("c.so")
        try CEmitter.emit(lowered).write(to: cSource, atomically: true, encoding: .utf8)
        try runTool(["cc", "-O2", "-shared", "-fPIC", "-o", cLibrary.path, cSource.path, "-lm"])
        let object = dir.appendingPathComponent("\(name).o"), llvmLibrary = dir.appendingPathComponent("llvm.so")
        let irFile = dir.appendingPathComponent("module.ll")
        try LLVMEmitter.emitObject(lowered, to: object, moduleName: name, irOutput: irFile)
        try LLVMEmitter.linkSharedLibrary(objects: [object], output: llvmLibrary)
        let ir = try String(contentsOf: irFile, encoding: .utf8)

        let c = try Library(cLibrary), llvm = try Library(llvmLibrary)
        // One set of weights and state, shared by the entry points (run in order).
        var rng = SplitMix(seed: 42)
        var values = given
        for function in module.functions {
            for arg in function.args where values[arg.name] == nil {
                values[arg.name] = HostTensor(arg.type, (0..<arg.type.count).map { _ in rng.uniform(-1, 1) })
            }
        }
        // The interpreter sees exactly the floats the compiled code reads.
        for (key, tensor) in values where tensor.type.dtype == .f32 {
            values[key] = HostTensor(tensor.type, tensor.data.map { Double(Float($0)) })
        }
        let cMemory = Memory(layout), llvmMemory = Memory(layout)
        for memory in [cMemory, llvmMemory] {
            for slot in layout.params { memory.write(values[slot.name]!, to: memory.params, at: slot.offset) }
            for slot in layout.state { memory.write(values[slot.name]!, to: memory.state, at: slot.offset) }
        }
        for function in module.functions {
            let entry = layout.entry(function.name)!
            var arguments: [String: HostTensor] = [:]
            for arg in function.args {
                switch arg.role {
                case .input: arguments[arg.name] = values[arg.name]!
                case .param, .frozen: arguments[arg.name] = cMemory.read(arg.type, from: cMemory.params, at: layout.param(arg.name)!.offset)
                case .state: arguments[arg.name] = cMemory.read(arg.type, from: cMemory.state, at: layout.stateSlot(arg.name)!.offset)
                }
            }
            let expected = try Interpreter.run(function, arguments: arguments, precision: .f64)
            for (library, memory) in [(c, cMemory), (llvm, llvmMemory)] {
                memory.prepare(entry)
                for slot in entry.inputs { memory.write(values[slot.name]!, to: memory.io, at: slot.offset) }
                XCTAssertEqual(try library.call("ddp_\(function.name)", memory), 0)
            }
            func compare(_ what: String, _ type: TensorType, _ region: (Memory) -> UnsafeMutableRawPointer,
                         _ offset: Int, _ reference: HostTensor) {
                let fromC = cMemory.read(type, from: region(cMemory), at: offset).data
                let fromLLVM = llvmMemory.read(type, from: region(llvmMemory), at: offset).data
                let backends = Self.closeness(fromLLVM, fromC, atol: 1e-6, rtol: 1e-5)
                XCTAssertLessThanOrEqual(backends, 1, "@\(function.name) \(what): LLVM \(fromLLVM.prefix(8)) vs C \(fromC.prefix(8))")
                for (backend, data) in [("C", fromC), ("LLVM", fromLLVM)] {
                    let oracle = Self.closeness(data, reference.data, atol: 1e-4, rtol: 1e-4)
                    XCTAssertLessThanOrEqual(oracle, 1, "@\(function.name) \(what): \(backend) \(data.prefix(8)) vs interpreter \(reference.data.prefix(8))")
                }
            }
            for slot in entry.outputs {
                let type = TensorType(DType(rawValue: slot.dtype)!, slot.shape)
                compare("output \(slot.name)", type, { $0.io }, slot.offset, expected.outputs[slot.name]!)
            }
            for (argName, reference) in expected.updates {
                let arg = function.argument(named: argName)!
                if arg.role == .state {
                    compare("state \(argName)", arg.type, { $0.state }, layout.stateSlot(argName)!.offset, reference)
                } else {
                    compare("weight \(argName)", arg.type, { $0.params }, layout.param(argName)!.offset, reference)
                }
            }
        }
        return Checked(planned: planned, ir: ir)
    }

    func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("ddepc-llvm-tests-\(ProcessInfo.processInfo.processIdentifier)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    func runTool(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        if process.terminationStatus != 0 {
            throw CodegenError("\(arguments.joined(separator: " ")) failed:\n\(String(decoding: output, as: UTF8.self))")
        }
    }
}

extension LLVMEmitterTests {
/// Deterministic data (splitmix64).
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func uniform(_ lo: Double, _ hi: Double) -> Double {
        lo + (hi - lo) * Double(next() >> 11) * 0x1p-53
    }
}

/// Max |a − b| / (atol + rtol·|b|); ≤ 1 is close.
static func closeness(_ a: [Double], _ b: [Double], atol: Double, rtol: Double) -> Double {
    guard a.count == b.count else { return .infinity }
    var worst = 0.0
    for (x, y) in zip(a, b) {
        if x.isNaN != y.isNaN { return .infinity }
        if x.isNaN { continue }
        if x == y { continue }  // equal infinities
        worst = max(worst, abs(x - y) / (atol + rtol * abs(y)))
    }
    return worst
}

/// A dlopen'ed shared library.
final class Library {
    let handle: UnsafeMutableRawPointer
    typealias Entry = @convention(c) (UnsafeRawPointer?, UnsafeRawPointer?) -> Int32

    init(_ url: URL) throws {
        guard let handle = dlopen(url.path, RTLD_NOW | RTLD_LOCAL) else {
            throw CodegenError("dlopen \(url.path): \(String(cString: dlerror()))")
        }
        self.handle = handle
    }

    deinit { dlclose(handle) }

    func call(_ symbol: String, _ memory: Memory) throws -> Int32 {
        guard let address = dlsym(handle, symbol) else { throw CodegenError("no symbol \(symbol)") }
        let entry = unsafeBitCast(address, to: Entry.self)
        return entry(UnsafeRawPointer(memory.buffers), UnsafeRawPointer(ddp_kernel_table()))
    }
}

/// The four runtime buffers and the `ddp_buffers` struct pointing at them.
final class Memory {
    let params: UnsafeMutableRawPointer, state: UnsafeMutableRawPointer
    var io: UnsafeMutableRawPointer, arena: UnsafeMutableRawPointer
    let buffers: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    private var ioBytes = 0, arenaBytes = 0

    init(_ layout: BufferLayout) {
        params = Memory.allocate(layout.paramsBytes)
        state = Memory.allocate(layout.stateBytes)
        ioBytes = layout.entries.map(\.ioBytes).max() ?? 0
        arenaBytes = layout.entries.map(\.arenaBytes).max() ?? 0
        io = Memory.allocate(ioBytes)
        arena = Memory.allocate(arenaBytes)
        buffers = .allocate(capacity: 4)
        buffers.initialize(from: [params, state, io, arena], count: 4)
    }

    deinit {
        for pointer in [params, state, io, arena] { free(pointer) }
        buffers.deallocate()
    }

    static func allocate(_ bytes: Int) -> UnsafeMutableRawPointer {
        var pointer: UnsafeMutableRawPointer?
        precondition(posix_memalign(&pointer, 64, max(bytes, 64)) == 0)
        return pointer!
    }

    /// Poisons io and arena (NaN bytes), so reading unwritten memory shows.
    func prepare(_ entry: BufferLayout.Entry) {
        memset(io, 0xFF, max(ioBytes, 64))
        memset(arena, 0xFF, max(arenaBytes, 64))
    }

    func write(_ tensor: HostTensor, to base: UnsafeMutableRawPointer, at offset: Int) {
        for (i, v) in tensor.data.enumerated() {
            switch tensor.type.dtype {
            case .f32: (base + offset + 4 * i).storeBytes(of: Float(v), as: Float.self)
            case .f64: (base + offset + 8 * i).storeBytes(of: v, as: Double.self)
            case .i32: (base + offset + 4 * i).storeBytes(of: Int32(v), as: Int32.self)
            case .i64: (base + offset + 8 * i).storeBytes(of: Int64(v), as: Int64.self)
            }
        }
    }

    func read(_ type: TensorType, from base: UnsafeMutableRawPointer, at offset: Int) -> HostTensor {
        HostTensor(type, (0..<type.count).map { i in
            switch type.dtype {
            case .f32: return Double((base + offset + 4 * i).load(as: Float.self))
            case .f64: return (base + offset + 8 * i).load(as: Double.self)
            case .i32: return Double((base + offset + 4 * i).load(as: Int32.self))
            case .i64: return Double((base + offset + 8 * i).load(as: Int64.self))
            }
        })
    }
}
}
