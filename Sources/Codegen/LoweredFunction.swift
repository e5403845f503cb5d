import ABI
import IR

/// A planned function lowered to the few things a backend must render:
/// kernel calls, elementwise loops and copies, over byte offsets in the four
/// runtime buffers. Both backends consume exactly this.
public struct LoweredFunction {
    public struct Address: Hashable {
        public var region: BufferLayout.Region
        public var offset: Int
        public var dtype: DType
    }

    /// One loop over the results' elements, after merging contiguous axes.
    /// Each element computes the statements in order: statement k's
    /// expression reads the operands as inputs 0..<operands.count and the
    /// values of earlier statements as inputs operands.count + j, and its
    /// value is stored into `results[k]` or only kept for later statements.
    /// A single elementwise node is one statement; a `loop` group of nodes
    /// (group-loops) is one statement per node, so an optimizer step reads
    /// the weight, gradient and moments once and writes each once.
    public struct Loop {
        public struct Statement: Hashable {
            public var expr: ScalarExpr
            /// Index into `results`, or nil for a value only later statements read.
            public var result: Int?
        }

        public var results: [Address]
        public var operands: [Address]
        /// Loop extents, outermost first (product = element count).
        public var shape: [Int]
        /// Per operand, its element stride along each loop axis (0 = broadcast).
        public var operandStrides: [[Int]]
        public var statements: [Statement]
        /// The kernel that runs the loop when it is not parallel_loop: a fused
        /// reduction's kernel calls the loop's task twin itself, chunk by
        /// chunk, with its first pointer set to a buffer of its own.
        public var caller: Caller?
        public var count: Int { shape.reduce(1, *) }

        public struct Caller: Hashable {
            public var index: Int
            public var name: String
            public var ints: [Int]
        }

        public init(results: [Address], operands: [Address], shape: [Int], operandStrides: [[Int]], statements: [Statement]) {
            self.results = results
            self.operands = operands
            self.shape = shape
            self.operandStrides = operandStrides
            self.statements = statements
        }

        /// One node's loop: one statement stored into `result`.
        public init(result: Address, operands: [Address], shape: [Int], operandStrides: [[Int]], expr: ScalarExpr) {
            self.init(results: [result], operands: operands, shape: shape, operandStrides: operandStrides,
                      statements: [Statement(expr: expr, result: 0)])
        }

        /// Operands that are a result's own storage (an update computed in
        /// place): emitters read them through that result's pointer, so the
        /// loop's pointers stay free of aliases (C `restrict`, LLVM
        /// `noalias`). Every operand is read at the top of an element's
        /// iteration, before any statement stores.
        public func resultRead(byOperand operand: Int) -> Int? { results.firstIndex(of: operands[operand]) }
        /// Called by a kernel over ranges [begin, end) of its outermost axis
        /// (through its task twin): by parallel_loop when it is large enough
        /// to split over the thread pool, or by its `caller`. Smaller loops
        /// run inline.
        public var parallel: Bool { caller != nil || (count >= Self.parallelMinimum && shape[0] > 1) }
        /// Elements below which waking the pool costs more than it saves.
        static let parallelMinimum = 1 << 15
    }

    /// The runtime kernel that runs a parallel loop (see ddp_kernels.h).
    public static let parallelLoopKernel = KernelTable.index(of: "parallel_loop")!

    public enum Step {
        case kernel(index: Int, name: String, buffers: [Address], ints: [Int], floats: [Double])
        case loop(Loop)
        case copy(to: Address, from: Address, bytes: Int)
        /// The printed IR of the node that follows (for readable output).
        case comment(String)
    }

    public var name: String
    public var steps: [Step]

    /// Kernel calls, loops and copies per piece of an entry point: both
    /// emitters make each piece a function of its own and the entry point a
    /// call of each in order. The C and LLVM optimizers grow faster than
    /// linearly with a function's length (GCC's combiner, dead-store
    /// elimination, register reload): TransUNet's fine-tuning step as one C
    /// function of 5,600 steps took 9.5 s to compile, in pieces of 64 to 512
    /// steps 3.3–3.6 s.
    public static let stepsPerPiece = 128

    /// The steps in pieces of `stepsPerPiece` (a comment goes with the step
    /// after it).
    public var pieces: [[Step]] {
        var pieces: [[Step]] = [[]]
        var calls = 0
        for step in steps {
            if case .comment = step {} else {
                if calls == Self.stepsPerPiece {
                    pieces.append([])
                    calls = 0
                }
                calls += 1
            }
            pieces[pieces.count - 1].append(step)
        }
        return pieces
    }

    /// The part of each function when a module is compiled as `parts`
    /// units side by side (one per core; a C or LLVM compile uses one):
    /// the largest first, each to the part with the fewest steps so far.
    public static func partition(_ functions: [LoweredFunction], into parts: Int) -> [Int] {
        var load = [Int](repeating: 0, count: max(parts, 1))
        var part = [Int](repeating: 0, count: functions.count)
        for index in functions.indices.sorted(by: { functions[$0].steps.count > functions[$1].steps.count }) {
            let lightest = load.indices.min { load[$0] < load[$1] }!
            part[index] = lightest
            load[lightest] += functions[index].steps.count
        }
        return part
    }
}

extension LoweredFunction {
    /// Every runtime kernel call the entry point makes, in order, with the
    /// printed node it computes (a loop group's last member) and whether it
    /// only lends that node's kernel scratch (`lend_scratch`,
    /// `lend_thread_scratch`), as both emitters call them: kernels, parallel
    /// loops and loops run by their caller, not the inline loops and copies.
    /// `ddepc bench --profile` attributes each call's time to its node with
    /// this.
    public var kernelCalls: [(kernel: String, node: String, scratchLoan: Bool)] {
        var calls: [(kernel: String, node: String, scratchLoan: Bool)] = []
        var node = ""
        for step in steps {
            switch step {
            case .comment(let text):
                node = text
            case .kernel(let index, let name, _, _, _):
                calls.append((name, node, index == Lowerer.lendScratchKernel || index == Lowerer.lendThreadScratchKernel))
            case .loop(let loop):
                if let caller = loop.caller {
                    calls.append((caller.name, node, false))
                } else if loop.parallel {
                    calls.append(("parallel_loop", node, false))
                }
            case .copy:
                break
            }
        }
        return calls
    }
}

public enum Lowerer {
    /// Lower a planned function (after plan-memory) against a buffer layout.
    public static func lower(_ function: Function, layout: BufferLayout) throws -> LoweredFunction {
        guard let entry = layout.entry(function.name) else { throw IRError("no layout for @\(function.name)") }
        var address: [ValueID: LoweredFunction.Address] = [:]
        for arg in function.args {
            let dtype = arg.type.dtype
            switch arg.role {
            case .input:
                address[arg.id] = .init(region: .io, offset: entry.inputs.first { $0.name == arg.name }!.offset, dtype: dtype)
            case .param, .frozen:
                address[arg.id] = .init(region: .params, offset: layout.param(arg.name)!.offset, dtype: dtype)
            case .state:
                address[arg.id] = .init(region: .state, offset: layout.stateSlot(arg.name)!.offset, dtype: dtype)
            }
        }
        var steps: [LoweredFunction.Step] = []
        var types = function.types
        if let problem = LoopGroups.problem(function) { throw IRError("in @\(function.name): \(problem)") }
        if let problem = BatchMomentsOps.problem(function) { throw IRError("in @\(function.name): \(problem)") }
        let groups = Dictionary(uniqueKeysWithValues: LoopGroups.runs(function).map { ($0.lowerBound, $0) })
        let outside = valuesReadOutsideTheirGroup(function)
        var pendingGroup: Range<Int>?
        for (position, node) in function.nodes.enumerated() {
            if let run = groups[position] { pendingGroup = run }
            let spec = try OpRegistry.require(node.op)
            if case .alias = spec.lowering {
                address[node.id] = address[node.operands[0]].map { .init(region: $0.region, offset: $0.offset, dtype: node.type.dtype) }
                continue
            }
            let result: LoweredFunction.Address
            if let target = node.inPlaceOf, let storage = address[target] {
                result = storage  // an update written over its argument
            } else if let offset = node.arenaOffset {
                result = .init(region: .arena, offset: offset, dtype: node.type.dtype)
            } else {
                throw IRError("%\(node.id) has no arena offset: run plan-memory before code generation", loc: node.loc)
            }
            address[node.id] = result
            steps.append(.comment(Printer.print(node)))
            var operands = node.operands.map { address[$0]! }
            var operandTypes = node.operands.map { types[$0]! }
            if node.attrs[FusedConvOps.momentsKey] != nil {
                // Its epilogue writes the batch moments the next node holds
                // (adjacent, as checked above): their buffer, as a last operand.
                let moments = function.nodes[position + 1]
                guard let offset = moments.arenaOffset else {
                    throw IRError("%\(moments.id) has no arena offset: run plan-memory before code generation", loc: moments.loc)
                }
                operands.append(.init(region: .arena, offset: offset, dtype: moments.type.dtype))
                operandTypes.append(moments.type)
            }
            switch spec.lowering {
            case .alias:
                break
            case .elementwise(let exprOf):
                if let run = pendingGroup {
                    // The group's loop goes where its last member is.
                    if position == run.upperBound - 1 {
                        steps.append(.loop(try makeGroupLoop(function.nodes[run], address: address, types: types, storing: outside)))
                        pendingGroup = nil
                    }
                } else {
                    steps.append(.loop(makeLoop(result: result, type: node.type, operands: operands,
                                                operandShapes: operandTypes.map(\.shape), expr: try exprOf(node.attrs))))
                }
            case .kernelOverLoop(let exprOf, let kernelOf):
                let call = try kernelOf(operandTypes, node.type, node.attrs)
                guard let index = KernelTable.index(of: call.kernel) else {
                    throw IRError("op \(node.op) needs kernel '\(call.kernel)', which the runtime lacks")
                }
                // The loop's result pointer is the kernel's own buffer; `result` only stands in for it.
                var loop = makeLoop(result: result, type: operandTypes[0], operands: operands,
                                    operandShapes: operandTypes.map(\.shape), expr: try exprOf(node.attrs))
                guard loop.shape.count == 1, loop.operandStrides.allSatisfy({ $0 == [1] || loop.count == 1 }) else {
                    throw IRError("%\(node.id) = \(node.op): its operands are not all of one shape", loc: node.loc)
                }
                loop.caller = .init(index: index, name: call.kernel, ints: call.ints)
                steps.append(.loop(loop))
            case .kernels(let lower):
                for call in try lower(operandTypes, node.type, node.attrs) {
                    guard let index = KernelTable.index(of: call.kernel) else {
                        throw IRError("op \(node.op) needs kernel '\(call.kernel)', which the runtime lacks")
                    }
                    let buffers = call.buffers.map { ref -> LoweredFunction.Address in
                        switch ref {
                        case .operand(let i): return operands[i]
                        case .result: return result
                        }
                    }
                    // Planned scratch is lent for this call only.
                    let scratch = call.scratchFloats > 0 ? node.scratchOffset.map { LoweredFunction.Address(region: .arena, offset: $0, dtype: .f32) } : nil
                    // And the arena nothing holds meanwhile, to its per-thread scratch.
                    let spare = call.threadScratch ? node.spare : nil
                    if let scratch { steps.append(lendScratch(scratch, floats: call.scratchFloats)) }
                    if let spare { steps.append(lendThreadScratch(spare, floats: spare.count / 4)) }
                    steps.append(.kernel(index: index, name: call.kernel, buffers: buffers, ints: call.ints, floats: call.floats))
                    if let spare { steps.append(lendThreadScratch(spare, floats: 0)) }
                    if let scratch { steps.append(lendScratch(scratch, floats: 0)) }
                }
            }
            types[node.id] = node.type
        }
        for output in function.outputs {
            let slot = entry.outputs.first { $0.name == output.name }!
            steps.append(.copy(to: .init(region: .io, offset: slot.offset, dtype: types[output.value]!.dtype),
                               from: address[output.value]!, bytes: slot.byteSize))
        }
        for update in function.updates {
            let target = address[update.target]!, source = address[update.value]!
            if target != source {
                steps.append(.copy(to: target, from: source, bytes: types[update.target]!.byteSize))
            }
        }
        return LoweredFunction(name: function.name, steps: steps)
    }

    static let lendScratchKernel = KernelTable.index(of: "lend_scratch")!

    /// The call lending `floats` of the arena at `region` to the next kernel
    /// call's weights scratch (0: taking the loan back).
    static func lendScratch(_ region: LoweredFunction.Address, floats: Int) -> LoweredFunction.Step {
        .kernel(index: lendScratchKernel, name: "lend_scratch", buffers: [region], ints: [floats], floats: [])
    }

    static let lendThreadScratchKernel = KernelTable.index(of: "lend_thread_scratch")!

    /// The call lending `floats` of the arena at `spare` to the next kernel
    /// call's per-thread scratch (0: taking the loan back).
    static func lendThreadScratch(_ spare: Range<Int>, floats: Int) -> LoweredFunction.Step {
        .kernel(index: lendThreadScratchKernel, name: "lend_thread_scratch",
                buffers: [LoweredFunction.Address(region: .arena, offset: spare.lowerBound, dtype: .f32)], ints: [floats], floats: [])
    }

    /// Values of grouped nodes that something outside their group reads
    /// (a later node, an output or an update): their statements store them.
    static func valuesReadOutsideTheirGroup(_ function: Function) -> Set<ValueID> {
        var group: [ValueID: Int] = [:]
        for node in function.nodes { group[node.id] = LoopGroups.group(of: node) }
        var read = Set(function.rootValues)
        for node in function.nodes {
            for operand in node.operands where group[operand] != nil && group[operand] != LoopGroups.group(of: node) {
                read.insert(operand)
            }
        }
        return read
    }

    /// One loop for a group of elementwise nodes: their operands from
    /// outside the group are the loop's operands, and each node is a
    /// statement that reads earlier members' values directly.
    static func makeGroupLoop(_ members: ArraySlice<Node>, address: [ValueID: LoweredFunction.Address], types: [ValueID: TensorType],
                              storing stored: Set<ValueID>) throws -> LoweredFunction.Loop {
        var operands: [ValueID] = []
        var statementOf: [ValueID: Int] = [:]
        var results: [LoweredFunction.Address] = []
        var statements: [LoweredFunction.Loop.Statement] = []
        for (k, node) in members.enumerated() {
            guard case .elementwise(let exprOf)? = OpRegistry.spec(node.op)?.lowering else {
                throw IRError("%\(node.id) = \(node.op) is grouped but is not an elementwise loop", loc: node.loc)
            }
            var inputs: [ScalarExpr] = []
            for operand in node.operands {
                if let j = statementOf[operand] {
                    inputs.append(.input(-1 - j)) // renumbered below, once the operands are known
                } else {
                    if !operands.contains(operand) { operands.append(operand) }
                    inputs.append(.input(operands.firstIndex(of: operand)!))
                }
            }
            var result: Int?
            if stored.contains(node.id) {
                results.append(address[node.id]!)
                result = results.count - 1
            }
            statements.append(.init(expr: try exprOf(node.attrs).substituting(inputs), result: result))
            statementOf[node.id] = k
        }
        // Statement j's value is input operands.count + j.
        let count = operands.count
        statements = statements.map { statement in
            var renumbered = statement
            renumbered.expr = statement.expr.mappingInputs { $0 < 0 ? count + (-1 - $0) : $0 }
            return renumbered
        }
        let shape = members.first!.type.shape
        let (merged, strides) = mergedAxes(shape: shape, operandShapes: operands.map { types[$0]!.shape })
        return .init(results: results, operands: operands.map { address[$0]! }, shape: merged, operandStrides: strides,
                     statements: statements.map { .init(expr: $0.expr.withVectorizableErf, result: $0.result) })
    }

    /// Build the loop nest of an elementwise node, merging axes that are
    /// contiguous for the result and every operand.
    static func makeLoop(result: LoweredFunction.Address, type: TensorType, operands: [LoweredFunction.Address],
                         operandShapes: [[Int]], expr: ScalarExpr) -> LoweredFunction.Loop {
        let (shape, strides) = mergedAxes(shape: type.shape, operandShapes: operandShapes)
        // erf as arithmetic: a libm call would keep the loop from vectorizing.
        return .init(result: result, operands: operands, shape: shape, operandStrides: strides, expr: expr.withVectorizableErf)
    }

    /// The loop axes of a result shape with size-1 axes dropped and axes
    /// merged where every operand's strides chain, and each operand's strides.
    static func mergedAxes(shape type: [Int], operandShapes: [[Int]]) -> (shape: [Int], strides: [[Int]]) {
        var shape = type
        var strides = operandShapes.map { BroadcastIndexer(from: $0, to: type).strides }
        // Drop size-1 axes, then merge axis i into i+1 where every stride chains.
        var axis = 0
        while axis < shape.count {
            if shape[axis] == 1 && shape.count > 1 {
                shape.remove(at: axis)
                for k in strides.indices { strides[k].remove(at: axis) }
            } else {
                axis += 1
            }
        }
        axis = shape.count - 2
        while axis >= 0 {
            let inner = shape[axis + 1]
            if strides.allSatisfy({ $0[axis] == $0[axis + 1] * inner }) {
                shape[axis] *= inner
                shape.remove(at: axis + 1)
                for k in strides.indices {
                    strides[k][axis] = strides[k][axis + 1]
                    strides[k].remove(at: axis + 1)
                }
            }
            axis -= 1
        }
        if shape.isEmpty {
            shape = [1]
            strides = strides.map { _ in [0] }
        }
        return (shape, strides)
    }
}
