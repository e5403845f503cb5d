import DDPKernels
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

    /// One loop over the result's elements, after merging contiguous axes.
    public struct Loop {
        public var result: Address
        public var operands: [Address]
        /// Loop extents, outermost first (product = element count).
        public var shape: [Int]
        /// Per operand, its element stride along each loop axis (0 = broadcast).
        public var operandStrides: [[Int]]
        public var expr: ScalarExpr
        public var count: Int { shape.reduce(1, *) }
        /// Operands that are the result's own storage (an update computed in
        /// place): emitters read them through the result pointer, so the
        /// loop's pointers stay free of aliases (C `restrict`, LLVM `noalias`).
        public func readsResult(_ operand: Int) -> Bool { operands[operand] == result }
        /// Large enough to split its outermost axis over the thread pool
        /// (the runtime's parallel_loop kernel); smaller loops run inline.
        public var parallel: Bool { count >= Self.parallelMinimum && shape[0] > 1 }
        /// Elements below which waking the pool costs more than it saves.
        static let parallelMinimum = 1 << 15
    }

    /// The runtime kernel that runs a parallel loop (see ddp_kernels.h).
    public static let parallelLoopKernel = Int(ddp_kernel_index("parallel_loop"))

    public enum Step {
        case kernel(index: Int, name: String, buffers: [Address], ints: [Int], floats: [Double])
        case loop(Loop)
        case copy(to: Address, from: Address, bytes: Int)
        /// The printed IR of the node that follows (for readable output).
        case comment(String)
    }

    public var name: String
    public var steps: [Step]
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
        for node in function.nodes {
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
            let operands = node.operands.map { address[$0]! }
            let operandTypes = node.operands.map { types[$0]! }
            switch spec.lowering {
            case .alias:
                break
            case .elementwise(let exprOf):
                steps.append(.loop(makeLoop(result: result, type: node.type, operands: operands,
                                            operandShapes: operandTypes.map(\.shape), expr: try exprOf(node.attrs))))
            case .kernels(let lower):
                for call in try lower(operandTypes, node.type, node.attrs) {
                    let index = Int(ddp_kernel_index(call.kernel))
                    guard index >= 0 else { throw IRError("op \(node.op) needs kernel '\(call.kernel)', which the runtime lacks") }
                    let buffers = call.buffers.map { ref -> LoweredFunction.Address in
                        switch ref {
                        case .operand(let i): return operands[i]
                        case .result: return result
                        }
                    }
                    steps.append(.kernel(index: index, name: call.kernel, buffers: buffers, ints: call.ints, floats: call.floats))
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

    /// Build the loop nest of an elementwise node, merging axes that are
    /// contiguous for the result and every operand.
    static func makeLoop(result: LoweredFunction.Address, type: TensorType, operands: [LoweredFunction.Address],
                         operandShapes: [[Int]], expr: ScalarExpr) -> LoweredFunction.Loop {
        var shape = type.shape
        var strides = operandShapes.map { BroadcastIndexer(from: $0, to: type.shape).strides }
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
        // erf as arithmetic: a libm call would keep the loop from vectorizing.
        return .init(result: result, operands: operands, shape: shape, operandStrides: strides, expr: expr.withVectorizableErf)
    }
}
