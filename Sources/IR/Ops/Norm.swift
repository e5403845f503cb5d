/// Normalization: batch_norm (statistics as operands), batch_norm_train (its
/// own batch statistics), group_norm, layer_norm. Forward ops are single
/// kernels; their gradients are built from primitive ops (and fused later),
/// so they are checked like any other composition, except group_norm's and
/// layer_norm's: one kernel reads x and the upstream gradient once for the
/// sums their backward pass needs (group_norm_grad_terms,
/// layer_norm_grad_terms and _params, each with an f64 reference of its
/// own), and one elementwise pass, fused with what follows, writes ∂x.
public enum NormOps {
    static let f = TensorType.f32

    /// [N, C, rest] of an NCHW-like shape.
    static func channelLayout(_ shape: [Int]) throws -> (n: Int, c: Int, rest: Int) {
        guard shape.count >= 2 else { throw IRError("needs a tensor of rank ≥ 2 (N, C, ...)") }
        return (shape[0], shape[1], shape.dropFirst(2).reduce(1, *))
    }

    static func checkChannelVectors(_ operands: ArraySlice<TensorType>, _ c: Int) throws {
        for operand in operands where operand.shape != [c] {
            throw IRError("per-channel operands must have shape [\(c)], got \(operand)")
        }
    }

    /// Sum a [N, C, ...] gradient down to [C].
    static func sumToChannels(_ b: FunctionBuilder, _ v: Value) throws -> Value {
        try b.sum(v, axes: [0] + Array(2..<v.rank))
    }

    /// Reshape a [C] vector so it broadcasts along axis 1 of a rank-r tensor.
    static func channelView(_ b: FunctionBuilder, _ v: Value, rank: Int) throws -> Value {
        try b.reshape(v, [1, v.shape[0]] + [Int](repeating: 1, count: rank - 2))
    }

    /// The `eps` attribute (1e-5 when absent); a negative or non-finite one is
    /// refused, since it makes every output NaN or silently wrong.
    static func eps(_ attrs: Attributes) throws -> Double {
        let value = try attrs["eps"] == nil ? 1e-5 : attrs.float("eps")
        guard value.isFinite, value >= 0 else { throw IRError("eps=\(value) must be a finite number ≥ 0") }
        return value
    }

    /// The batch moments of x over N and the spatial axes: mean and biased
    /// variance per channel ([C]), and x − mean. A training batch norm's layer
    /// (for its running statistics) and batch_norm_train's gradient both build
    /// them here, so the step computes them once; data-parallel compilation
    /// (sync-batch-norm) finds them by this shape and averages them across
    /// processes.
    public static func batchMoments(_ b: FunctionBuilder, _ x: Value) throws -> (mean: Value, centered: Value, variance: Value) {
        let axes = [0] + Array(2..<x.rank)
        let mean = try b.mean(x, axes: axes)
        let centered = try b.sub(x, try channelView(b, mean, rank: x.rank))
        let variance = try b.mean(try b.mul(centered, centered), axes: axes)
        return (mean, centered, variance)
    }

    /// The nodes batchMoments built for x among those before `position`:
    /// reduce_mean(x), x − reshape(mean), and reduce_mean of its square; nil
    /// when the function does not compute them there.
    public static func existingBatchMoments(of x: ValueID, in function: Function, before position: Int)
        -> (mean: ValueID, centered: ValueID, variance: ValueID)? {
        let nodes = function.nodes[..<position]
        guard let rank = function.types[x]?.rank, rank >= 2 else { return nil }
        let axes = [0] + Array(2..<rank)
        func isBatchMean(_ node: Node, of value: ValueID) -> Bool {
            node.op == "reduce_mean" && node.operands == [value] && (try? node.attrs.ints("axes")) == axes && node.attrs["keepdims"] == nil
        }
        guard let mean = nodes.first(where: { isBatchMean($0, of: x) }),
              let view = nodes.first(where: { $0.op == "reshape" && $0.operands == [mean.id] }),
              let centered = nodes.first(where: { $0.op == "sub" && $0.operands == [x, view.id] }),
              let square = nodes.first(where: { $0.op == "mul" && $0.operands == [centered.id, centered.id] }),
              let variance = nodes.first(where: { isBatchMean($0, of: square.id) }) else { return nil }
        return (mean.id, centered.id, variance.id)
    }

    /// batch_norm_train's y from its moments: (x − mean)·γ/√(var + eps) + β,
    /// one elementwise expression of the centered tensor and [C] vectors.
    public static func normalizeCentered(_ b: FunctionBuilder, centered: Value, variance: Value, gamma: Value, beta: Value,
                                         attrs: Attributes) throws -> Value {
        let rank = centered.rank
        let r = try b.unary("rsqrt", try b.add(variance, try b.constant(try eps(attrs), like: variance)))
        let scale = try channelView(b, try b.mul(gamma, r), rank: rank)
        return try b.add(try b.mul(centered, scale), try channelView(b, beta, rank: rank))
    }

    /// Normalize `x` (already grouped so the statistic axis is last) in the interpreter.
    static func normalizeRows(_ data: [Double], rows: Int, cols: Int, eps: Double) -> [Double] {
        var out = data
        for r in 0..<rows {
            let row = data[(r * cols)..<((r + 1) * cols)]
            let mean = row.reduce(0, +) / Double(cols)
            let variance = row.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(cols)
            let scale = 1 / (variance + eps).squareRoot()
            for i in 0..<cols { out[r * cols + i] = (data[r * cols + i] - mean) * scale }
        }
        return out
    }

    /// group_norm_grad_terms in f64, from the definitions (the reference the
    /// kernel is checked against): per (n, group) with r = 1/√(var + eps),
    /// A = mean(γ·dy) and B = mean(γ·dy·x̂) over the group, dx = r·(γ·dy − A
    /// − x̂·B) = a·dy + b·(x − mean) + c.
    static func groupNormGradTerms(_ operands: [HostTensor], groups: Int, eps: Double) throws -> HostTensor {
        let (x, dy, gamma) = (operands[0].data, operands[1].data, operands[2].data)
        let (n, c, rest) = try channelLayout(operands[0].shape)
        let perGroup = c / groups, count = Double(perGroup * rest), plane = n * c
        var out = [Double](repeating: 0, count: 6 * plane)
        for sample in 0..<n {
            for group in 0..<groups {
                let channels = (group * perGroup)..<((group + 1) * perGroup)
                let span = ((sample * c + channels.lowerBound) * rest)..<((sample * c + channels.upperBound) * rest)
                let mean = x[span].reduce(0, +) / count
                let r = 1 / (x[span].reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / count + eps).squareRoot()
                var meanG = 0.0, meanGXhat = 0.0
                for channel in channels {
                    let at = sample * c + channel
                    var sumDy = 0.0, sumDyXhat = 0.0
                    for i in (at * rest)..<((at + 1) * rest) {
                        sumDy += dy[i]
                        sumDyXhat += dy[i] * (x[i] - mean) * r
                    }
                    meanG += gamma[channel] * sumDy / count
                    meanGXhat += gamma[channel] * sumDyXhat / count
                    out[4 * plane + at] = sumDyXhat
                    out[5 * plane + at] = sumDy
                }
                for channel in channels {
                    let at = sample * c + channel
                    out[at] = r * gamma[channel]
                    out[plane + at] = -r * r * meanGXhat
                    out[2 * plane + at] = mean
                    out[3 * plane + at] = -r * meanG
                }
            }
        }
        return HostTensor(f([6, n, c]), out)
    }

    /// layer_norm_grad_terms in f64, from the definitions: per row, with
    /// r = 1/√(var + eps), A = mean(γ·dy) and B = mean(γ·dy·x̂), dx = r·(γ·dy
    /// − A − x̂·B) = r·γ·dy + b·(x − mean) + c.
    static func layerNormGradTerms(_ operands: [HostTensor], eps: Double) throws -> HostTensor {
        let (x, dy, gamma) = (operands[0].data, operands[1].data, operands[2].data)
        let columns = gamma.count, rows = x.count / columns, count = Double(columns)
        var out = [Double](repeating: 0, count: 4 * rows)
        for row in 0..<rows {
            let span = (row * columns)..<((row + 1) * columns)
            let mean = x[span].reduce(0, +) / count
            let r = 1 / (x[span].reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / count + eps).squareRoot()
            var meanG = 0.0, meanGXhat = 0.0
            for (column, i) in span.enumerated() {
                meanG += gamma[column] * dy[i] / count
                meanGXhat += gamma[column] * dy[i] * (x[i] - mean) * r / count
            }
            out[row] = r
            out[rows + row] = -r * r * meanGXhat
            out[2 * rows + row] = mean
            out[3 * rows + row] = -r * meanG
        }
        return HostTensor(f([4, rows]), out)
    }

    /// x's type, once every other operand is a [C] vector and eps is valid
    /// (the batch norms).
    static func perChannelType(_ operands: [TensorType], _ attrs: Attributes) throws -> TensorType {
        let (_, c, _) = try channelLayout(operands[0].shape)
        try checkChannelVectors(operands[1...], c)
        _ = try eps(attrs)
        return operands[0]
    }

    /// The one epilogue fused_batch_norm_train applies: a ReLU.
    public static let reluEpilogue = ScalarExpr.binary(.max, .input(0), .const(0))

    static func batchNormTrainKernel(_ operands: [TensorType], _ attrs: Attributes, relu: Bool) throws -> [KernelCall] {
        let (n, c, rest) = try channelLayout(operands[0].shape)
        return [KernelCall("batch_norm_train", [.operand(0), .operand(1), .operand(2), .result],
                           ints: [n, c, rest, relu ? 1 : 0], floats: [try eps(attrs)])]
    }

    /// batch_norm_train in f64: per channel, the mean and biased variance
    /// over N × HW, then the affine.
    static func evaluateBatchNormTrain(_ operands: [HostTensor], _ attrs: Attributes, _ type: TensorType) throws -> HostTensor {
        let (n, c, rest) = try channelLayout(type.shape)
        let e = try eps(attrs), x = operands[0].data, count = Double(n * rest)
        var out = x
        for ch in 0..<c {
            var indices: [Int] = []
            for i in 0..<n { indices += Array((i * c + ch) * rest..<(i * c + ch + 1) * rest) }
            var sum = 0.0
            for i in indices { sum += x[i] }
            let mean = sum / count
            var squares = 0.0
            for i in indices { squares += (x[i] - mean) * (x[i] - mean) }
            let scale: Double = operands[1].data[ch] / (squares / count + e).squareRoot()
            let shift: Double = operands[2].data[ch]
            for i in indices { out[i] = (x[i] - mean) * scale + shift }
        }
        return HostTensor(type, out)
    }

    public static let all: [OpSpec] = [
        /// ∂x = g·γ·r, ∂mean = −Σ g·γ·r, ∂var = −½ Σ g·(x−mean)·γ·r³, ∂γ = Σ g·(x−mean)·r, ∂β = Σ g
        OpSpec(name: "batch_norm", doc: "%y = batch_norm(%x, %mean, %var, %gamma, %beta) {eps=1e-5}: (x−mean)/√(var+eps)·γ + β per channel",
               arity: 5...5,
               inferType: perChannelType,
               evaluate: { operands, attrs, type in
                   let (n, c, rest) = try channelLayout(type.shape)
                   let e = try eps(attrs)
                   var out = operands[0].data
                   for i in 0..<(n * c * rest) {
                       let ch = (i / rest) % c
                       out[i] = (out[i] - operands[1].data[ch]) / (operands[2].data[ch] + e).squareRoot()
                           * operands[3].data[ch] + operands[4].data[ch]
                   }
                   return HostTensor(type, out)
               },
               gradient: { c in
                   let b = c.builder, x = c.operands[0], rank = x.rank
                   let view = { (v: Value) in try channelView(b, v, rank: rank) }
                   let r = try b.unary("rsqrt", try b.add(c.operands[2], try b.constant(try eps(c.attrs), like: x)))
                   let gGamma = try b.mul(c.grad, try view(c.operands[3]))
                   let dx = try b.mul(gGamma, try view(r))
                   let centered = try b.sub(x, try view(c.operands[1]))
                   let dMean = try b.neg(try sumToChannels(b, dx))
                   let r3 = try b.mul(r, try b.mul(r, r))
                   let dVar = try b.mul(try sumToChannels(b, try b.mul(gGamma, centered)),
                                        try b.mul(r3, try b.constant(-0.5, like: x)))
                   let dGamma = try b.mul(try sumToChannels(b, try b.mul(c.grad, centered)), r)
                   return [dx, dMean, dVar, dGamma, try sumToChannels(b, c.grad)]
               },
               lowering: .kernels { operands, _, attrs in
                   let (n, c, rest) = try channelLayout(operands[0].shape)
                   return [KernelCall("batch_norm", [.operand(0), .operand(1), .operand(2), .operand(3), .operand(4), .result],
                                      ints: [n, c, rest], floats: [try eps(attrs)])]
               },
               examples: [([f([2, 3, 2, 2]), f([3]), f([3]), f([3]), f([3])], ["eps": .float(1e-3)])]),

        /// With r = 1/√(var+eps), M = N·HW and the sums over N and HW per channel:
        /// ∂x = γr·g − γr·Σg/M − (x−μ)·γr³·Σg(x−μ)/M,  ∂γ = r·Σg(x−μ),  ∂β = Σg
        /// — the total derivative through the batch statistics, as one loop
        /// over g and x−μ after two channel sums.
        OpSpec(name: "batch_norm_train", doc: "%y = batch_norm_train(%x, %gamma, %beta) {eps=1e-5}: batch_norm with x's own batch mean and biased variance per channel",
               arity: 3...3,
               inferType: perChannelType,
               evaluate: evaluateBatchNormTrain,
               gradient: { c in
                   let b = c.builder, x = c.operands[0], g = c.grad
                   let axes = [0] + Array(2..<x.rank), channels = x.shape[1]
                   let (_, centered, variance) = try batchMoments(b, x)
                   let r = try b.unary("rsqrt", try b.add(try channelView(b, variance, rank: x.rank), try b.constant(try eps(c.attrs), like: x)))
                   let count = try b.constant(Double(x.type.count / channels), like: x)
                   let sumG = try b.sum(g, axes: axes, keepDims: true)
                   let sumGD = try b.sum(try b.mul(g, centered), axes: axes, keepDims: true)
                   let gammaR = try b.mul(try channelView(b, c.operands[1], rank: x.rank), r)
                   let shift = try b.div(try b.mul(gammaR, sumG), count)
                   let slope = try b.div(try b.mul(try b.mul(gammaR, try b.mul(r, r)), sumGD), count)
                   let dx = try b.sub(try b.sub(try b.mul(gammaR, g), shift), try b.mul(centered, slope))
                   return [dx, try b.reshape(try b.mul(sumGD, r), [channels]), try b.reshape(sumG, [channels])]
               },
               lowering: .kernels { operands, _, attrs in try batchNormTrainKernel(operands, attrs, relu: false) },
               examples: [([f([2, 3, 2, 2]), f([3]), f([3])], ["eps": .float(1e-3)])],
               overwritesOperand: 0), // a channel's statistics are read before its planes are written

        /// batch_norm_train and the activation after it in one pass (made by
        /// fuse-norm-activation after autodiff, so it has no gradient rule).
        OpSpec(name: "fused_batch_norm_train",
               doc: "%y = fused_batch_norm_train(%x, %gamma, %beta) {eps=1e-5, epilogue=max(in0, 0.0)}: batch_norm_train, then the epilogue (a ReLU)",
               arity: 3...3, requiredAttributes: ["epilogue"],
               inferType: { operands, attrs in
                   let epilogue = try attrs.expr("epilogue")
                   guard epilogue == reluEpilogue else {
                       throw IRError("epilogue \(epilogue) is not one the kernel applies (only \(reluEpilogue))")
                   }
                   return try perChannelType(operands, attrs)
               },
               evaluate: { operands, attrs, type in
                   let normalized = try evaluateBatchNormTrain(operands, attrs, type)
                   let epilogue = try attrs.expr("epilogue")
                   return HostTensor(type, normalized.data.map { epilogue.evaluate([$0]) })
               },
               gradient: nil,
               lowering: .kernels { operands, _, attrs in try batchNormTrainKernel(operands, attrs, relu: true) },
               examples: [([f([2, 3, 2, 2]), f([3]), f([3])], ["eps": .float(1e-3), "epilogue": .expr(reluEpilogue)])],
               overwritesOperand: 0),

        /// ∂x, ∂γ and ∂β from group_norm_grad_terms: one kernel reads x and g once
        /// per group, and one elementwise pass writes ∂x (fused with what follows).
        OpSpec(name: "group_norm", doc: "%y = group_norm(%x, %gamma, %beta) {groups=32, eps=1e-5}: per (n, group) normalization, per-channel affine",
               arity: 3...3, requiredAttributes: ["groups"],
               inferType: { operands, attrs in
                   let (_, c, _) = try channelLayout(operands[0].shape)
                   _ = try eps(attrs)
                   let groups = try attrs.int("groups")
                   guard groups > 0, c % groups == 0 else { throw IRError("groups=\(groups) must divide the \(c) channels") }
                   try checkChannelVectors(operands[1...], c)
                   return operands[0]
               },
               evaluate: { operands, attrs, type in
                   let (n, c, rest) = try channelLayout(type.shape)
                   let groups = try attrs.int("groups")
                   var out = normalizeRows(operands[0].data, rows: n * groups, cols: c / groups * rest, eps: try eps(attrs))
                   for i in out.indices {
                       let ch = (i / rest) % c
                       out[i] = out[i] * operands[1].data[ch] + operands[2].data[ch]
                   }
                   return HostTensor(type, out)
               },
               gradient: { c in
                   let b = c.builder, x = c.operands[0]
                   let (n, channels, _) = try channelLayout(x.shape)
                   let terms = try b.emit("group_norm_grad_terms", [x, c.grad, c.operands[1]],
                                          ["groups": .int(try c.attrs.int("groups")), "eps": .float(try eps(c.attrs))])
                   func plane(_ k: Int, shape: [Int]) throws -> Value {
                       try b.reshape(try b.slice(terms, start: [k, 0, 0], end: [k + 1, n, channels]), shape)
                   }
                   func perSample(_ k: Int) throws -> Value {
                       try plane(k, shape: [n, channels] + [Int](repeating: 1, count: x.rank - 2))
                   }
                   let dx = try b.add(try b.add(try b.mul(try perSample(0), c.grad),
                                                try b.mul(try perSample(1), try b.sub(x, try perSample(2)))), try perSample(3))
                   return [dx, try b.sum(try plane(4, shape: [n, channels]), axes: [0]), try b.sum(try plane(5, shape: [n, channels]), axes: [0])]
               },
               lowering: .kernels { operands, _, attrs in
                   let (n, c, rest) = try channelLayout(operands[0].shape)
                   return [KernelCall("group_norm", [.operand(0), .operand(1), .operand(2), .result],
                                      ints: [n, c, rest, try attrs.int("groups")], floats: [try eps(attrs)])]
               },
               examples: [([f([2, 4, 3, 2]), f([4]), f([4])], ["groups": .int(2), "eps": .float(1e-3)])],
               recomputable: true),

        /// Not differentiated (a gradient's gradient is never taken).
        OpSpec(name: "group_norm_grad_terms",
               doc: "%t = group_norm_grad_terms(%x, %dy, %gamma) {groups=32, eps=1e-5} : f32[6,N,C]: group_norm's backward pass as per-(n, channel) planes a, b, mu, c (dx = a·dy + b·(x − mu) + c), then the parts of dgamma and dbeta",
               arity: 3...3, requiredAttributes: ["groups"],
               inferType: { operands, attrs in
                   let (n, c, _) = try channelLayout(operands[0].shape)
                   _ = try eps(attrs)
                   let groups = try attrs.int("groups")
                   guard groups > 0, c % groups == 0 else { throw IRError("groups=\(groups) must divide the \(c) channels") }
                   guard operands[1] == operands[0] else { throw IRError("dy \(operands[1]) must have x's type \(operands[0])") }
                   try checkChannelVectors(operands[2...], c)
                   return f([6, n, c])
               },
               evaluate: { operands, attrs, type in try groupNormGradTerms(operands, groups: try attrs.int("groups"), eps: try eps(attrs)) },
               gradient: nil,
               lowering: .kernels { operands, _, attrs in
                   let (n, c, rest) = try channelLayout(operands[0].shape)
                   return [KernelCall("group_norm_grad_terms", [.operand(0), .operand(1), .operand(2), .result],
                                      ints: [n, c, rest, try attrs.int("groups")], floats: [try eps(attrs)])]
               },
               examples: [([f([2, 4, 3, 2]), f([2, 4, 3, 2]), f([4])], ["groups": .int(2), "eps": .float(1e-3)]),
                          ([f([3, 6, 5]), f([3, 6, 5]), f([6])], ["groups": .int(3)])]),

        /// ∂x from layer_norm_grad_terms (one read of each row) in one
        /// elementwise pass; ∂γ = Σ g·x̂ and ∂β = Σ g from layer_norm_grad_params.
        OpSpec(name: "layer_norm", doc: "%y = layer_norm(%x, %gamma, %beta) {eps=1e-5}: normalization over the last axis",
               arity: 3...3,
               inferType: { operands, attrs in
                   guard let d = operands[0].shape.last else { throw IRError("needs a tensor of rank ≥ 1") }
                   try checkChannelVectors(operands[1...], d)
                   _ = try eps(attrs)
                   return operands[0]
               },
               evaluate: { operands, attrs, type in
                   let d = type.shape.last!
                   var out = normalizeRows(operands[0].data, rows: type.count / d, cols: d, eps: try eps(attrs))
                   for i in out.indices { out[i] = out[i] * operands[1].data[i % d] + operands[2].data[i % d] }
                   return HostTensor(type, out)
               },
               gradient: { c in
                   let b = c.builder, x = c.operands[0], gamma = c.operands[1]
                   let columns = x.shape.last!, rows = x.type.count / columns
                   let terms = try b.emit("layer_norm_grad_terms", [x, c.grad, gamma], ["eps": .float(try eps(c.attrs))])
                   func perRow(_ k: Int) throws -> Value {
                       try b.reshape(try b.slice(terms, start: [k, 0], end: [k + 1, rows]), Array(x.shape.dropLast()) + [1])
                   }
                   let dx = try b.add(try b.add(try b.mul(try b.mul(try perRow(0), gamma), c.grad),
                                                try b.mul(try perRow(1), try b.sub(x, try perRow(2)))), try perRow(3))
                   let params = try b.emit("layer_norm_grad_params", [x, c.grad, terms])
                   func param(_ k: Int) throws -> Value {
                       try b.reshape(try b.slice(params, start: [k, 0], end: [k + 1, columns]), [columns])
                   }
                   return [dx, try param(0), try param(1)]
               },
               lowering: .kernels { operands, _, attrs in
                   let d = operands[0].shape.last!
                   return [KernelCall("layer_norm", [.operand(0), .operand(1), .operand(2), .result],
                                      ints: [operands[0].count / d, d], floats: [try eps(attrs)])]
               },
               examples: [([f([2, 3, 5]), f([5]), f([5])], ["eps": .float(1e-3)])],
               recomputable: true),
        /// Not differentiated (a gradient's gradient is never taken).
        OpSpec(name: "layer_norm_grad_terms",
               doc: "%t = layer_norm_grad_terms(%x, %dy, %gamma) {eps=1e-5} : f32[4,R]: layer_norm's backward pass per row (R rows) as vectors r, b, mu, c: dx = r·gamma·dy + b·(x − mu) + c",
               arity: 3...3,
               inferType: { operands, attrs in
                   guard let columns = operands[0].shape.last else { throw IRError("needs a tensor of rank ≥ 1") }
                   _ = try eps(attrs)
                   guard operands[1] == operands[0] else { throw IRError("dy \(operands[1]) must have x's type \(operands[0])") }
                   try checkChannelVectors(operands[2...], columns)
                   return f([4, operands[0].count / max(columns, 1)])
               },
               evaluate: { operands, attrs, type in try layerNormGradTerms(operands, eps: try eps(attrs)) },
               gradient: nil,
               lowering: .kernels { operands, _, attrs in
                   let columns = operands[0].shape.last!
                   return [KernelCall("layer_norm_grad_terms", [.operand(0), .operand(1), .operand(2), .result],
                                      ints: [operands[0].count / columns, columns], floats: [try eps(attrs)])]
               },
               examples: [([f([2, 3, 5]), f([2, 3, 5]), f([5])], ["eps": .float(1e-3)])]),

        /// Not differentiated (a gradient's gradient is never taken).
        OpSpec(name: "layer_norm_grad_params",
               doc: "%p = layer_norm_grad_params(%x, %dy, %t) : f32[2,D]: layer_norm's dgamma = Σ dy·(x − mu)·r and dbeta = Σ dy over the rows, from layer_norm_grad_terms' %t",
               arity: 3...3,
               inferType: { operands, _ in
                   guard let columns = operands[0].shape.last, columns > 0 else { throw IRError("needs a tensor of rank ≥ 1") }
                   let rows = operands[0].count / columns
                   guard operands[1] == operands[0] else { throw IRError("dy \(operands[1]) must have x's type \(operands[0])") }
                   guard operands[2].shape == [4, rows] else { throw IRError("terms \(operands[2]) must be f32[4,\(rows)]") }
                   return f([2, columns])
               },
               evaluate: { operands, _, type in
                   let (x, dy, terms) = (operands[0].data, operands[1].data, operands[2].data)
                   let columns = type.shape[1], rows = x.count / columns
                   var out = [Double](repeating: 0, count: 2 * columns)
                   for row in 0..<rows {
                       for column in 0..<columns {
                           let i = row * columns + column
                           out[column] += dy[i] * (x[i] - terms[2 * rows + row]) * terms[row]
                           out[columns + column] += dy[i]
                       }
                   }
                   return HostTensor(type, out)
               },
               gradient: nil,
               lowering: .kernels { operands, _, _ in
                   let columns = operands[0].shape.last!
                   return [KernelCall("layer_norm_grad_params", [.operand(0), .operand(1), .operand(2), .result],
                                      ints: [operands[0].count / columns, columns])]
               },
               examples: [([f([2, 3, 70]), f([2, 3, 70]), f([4, 6])], [:])]),
    ]
}
