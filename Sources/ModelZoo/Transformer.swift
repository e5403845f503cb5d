import Foundation
import IR

/// Multi-head self-attention on tokens [B, N, D] (TransUNet's `Attention`):
/// separate `query`, `key`, `value` projections, softmax(q·kᵀ/√d_head)·v per
/// head, then the `out` projection. Composed from linear layers, reshape,
/// permute, batched matmul and softmax.
public struct MultiHeadSelfAttention {
    public let scope: Scope
    public var dim, heads: Int

    public init(_ scope: Scope, dim: Int, heads: Int) {
        self.scope = scope
        self.dim = dim
        self.heads = heads
    }

    public func callAsFunction(_ x: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        x.context.at(file, line) {
            guard x.rank == 3, x.shape[2] == dim, heads > 0, dim % heads == 0 else {
                x.context.fail("attention \"\(scope.path)\": needs tokens [B, N, \(dim)] and \(heads) heads dividing \(dim), got \(x.type)")
                return x
            }
            let (b, n, headDim) = (x.shape[0], x.shape[1], dim / heads)
            /// [B, N, D] → [B, heads, N, headDim]
            func split(_ t: Tensor) -> Tensor { t.reshape([b, n, heads, headDim]).permute([0, 2, 1, 3]) }
            let q = split(Linear(scope["query"], dim, dim)(x))
            let k = split(Linear(scope["key"], dim, dim)(x))
            let v = split(Linear(scope["value"], dim, dim)(x))
            let scores = q.matmul(k, transposeB: true) * (1 / Double(headDim).squareRoot())
            let context = scores.softmax(axis: -1).matmul(v).permute([0, 2, 1, 3]).reshape([b, n, dim])
            return Linear(scope["out"], dim, dim)(context)
        }
    }
}

/// A pre-LayerNorm transformer block (TransUNet's `Block`):
/// x + attn(attention_norm(x)), then + ffn(ffn_norm(·)) with
/// ffn = fc2(gelu(fc1(·))) (the erf GELU). LayerNorm eps 1e-6. Initialised
/// as TransUNet's code does: attention projections PyTorch's `nn.Linear`
/// default, fc1/fc2 xavier_uniform with normal(std 1e-6) biases.
public struct TransformerBlock {
    public let scope: Scope
    public var dim, heads, mlpDim: Int
    public var eps: Double

    public init(_ scope: Scope, dim: Int, heads: Int, mlpDim: Int, eps: Double = 1e-6) {
        self.scope = scope
        self.dim = dim
        self.heads = heads
        self.mlpDim = mlpDim
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        x.context.at(file, line) {
            let attended = x + MultiHeadSelfAttention(scope["attn"], dim: dim, heads: heads)(
                LayerNorm(scope["attention_norm"], dim, eps: eps)(x))
            let normed = LayerNorm(scope["ffn_norm"], dim, eps: eps)(attended)
            // TransUNet's Mlp._init_weights: xavier_uniform weights, normal(1e-6) biases.
            let hidden = Linear(scope["ffn.fc1"], dim, mlpDim, weightInit: .xavier, biasInit: .normal(1e-6))(normed).gelu()
            return attended + Linear(scope["ffn.fc2"], mlpDim, dim, weightInit: .xavier, biasInit: .normal(1e-6))(hidden)
        }
    }
}
