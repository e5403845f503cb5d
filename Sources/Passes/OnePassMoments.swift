import IR

/// Computes each training batch norm's statistics in one pass over x.
///
/// A layer builds its batch moments as NormOps.batchMoments does: the mean
/// (reduce_mean of x), x − mean, and the variance (reduce_mean of
/// (x − mean)²). The two reductions are two passes over x besides the
/// subtraction's. This pass computes both from one `batch_moments(x)` (sums
/// of x and x² in double, per row, added in a fixed order) and reads the
/// mean and the variance out of it; x − mean stays, for the normalization
/// and the backward pass. fuse-conv-moments later moves the pass itself
/// into the convolution that produces x, where it costs no pass at all.
///
/// It runs after batch-norm-from-moments, which finds the moments by the
/// form above. Moments averaged across processes (sync-batch-norm) keep
/// that form: their variance is taken around the global mean, which no
/// process has before the exchange.
public struct OnePassMoments: Pass {
    public static let name = "one-pass-moments"
    public init() {}

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for index in module.functions.indices {
            changed = rewrite(&module.functions[index]) || changed
        }
        return changed
    }

    func rewrite(_ function: inout Function) -> Bool {
        var changed = false
        var position = 0
        while position < function.nodes.count {
            let node = function.nodes[position]
            position += 1
            guard node.op == "reduce_mean", let x = node.operands.first,
                  let moments = NormOps.existingBatchMoments(of: x, in: function, before: function.nodes.count),
                  moments.mean == node.id else { continue }
            replace(moments, of: x, in: &function)
            changed = true
        }
        return changed
    }

    /// Puts batch_moments(x) where the mean was, and the mean and the
    /// variance as reshaped rows of it where they were; the square that only
    /// the variance read goes.
    func replace(_ moments: (mean: ValueID, centered: ValueID, variance: ValueID), of x: ValueID, in function: inout Function) {
        let types = function.types
        let c = types[moments.mean]!.shape[0]
        var next = function.nextID
        func fresh() -> ValueID {
            defer { next += 1 }
            return next
        }
        let meanAt = function.nodes.firstIndex { $0.id == moments.mean }!
        let loc = function.nodes[meanAt].loc
        let both = Node(id: fresh(), op: "batch_moments", operands: [x], type: .f32([2, c]), loc: loc)
        func row(_ k: Int, as id: ValueID) -> [Node] {
            let slice = Node(id: fresh(), op: "slice", operands: [both.id], attrs: ["start": .ints([k, 0]), "end": .ints([k + 1, c])],
                             type: .f32([1, c]), loc: loc)
            return [slice, Node(id: id, op: "reshape", operands: [slice.id], attrs: ["shape": .ints([c])], type: .f32([c]), loc: loc)]
        }
        function.nodes.replaceSubrange(meanAt...meanAt, with: [both] + row(0, as: moments.mean))
        let varianceAt = function.nodes.firstIndex { $0.id == moments.variance }!
        let square = function.nodes[varianceAt].operands[0]
        function.nodes.replaceSubrange(varianceAt...varianceAt, with: row(1, as: moments.variance))
        let stillRead = function.nodes.contains { $0.operands.contains(square) } || function.rootValues.contains(square)
        if !stillRead { function.nodes.removeAll { $0.id == square } }
    }
}
