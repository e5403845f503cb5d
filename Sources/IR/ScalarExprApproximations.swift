/// Transcendental functions as plain arithmetic, for generated loops: a loop
/// with a libm call in it (erff) runs one element at a time, while adds,
/// multiplies, a division and selects vectorize. The reference interpreter
/// keeps the exact functions; the lowering to loops uses these.
extension ScalarExpr {
    /// erf(x) as x·P(x²)/Q(x²) on [−4, 4] and ±1 beyond (where erf is ±1 in
    /// float), the rational approximation Eigen and XLA use. Measured against
    /// erf in double over [−6, 6]: at most 4e-7 off (7 ulp near x = 3.1,
    /// under 2e-7 relative error in GELU). NaN stays NaN (a select, not a
    /// min or max, does the clamping).
    static func erfApproximation(_ input: ScalarExpr) -> ScalarExpr {
        let above = ScalarExpr.binary(.gt, input, .const(4))
        let below = ScalarExpr.binary(.gt, .const(-4), input)
        let x = ScalarExpr.select(above, .const(4), .select(below, .const(-4), input))
        let x2 = ScalarExpr.binary(.mul, x, x)
        /// c[0] + x²·(c[1] + x²·(c[2] + ...)), Horner's rule.
        func polynomial(_ coefficients: [Double]) -> ScalarExpr {
            coefficients.dropLast().reversed().reduce(ScalarExpr.const(coefficients.last!)) { inner, c in
                .binary(.add, .const(c), .binary(.mul, x2, inner))
            }
        }
        let numerator = polynomial([-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04,
                                    -5.69250639462346e-05, -2.10102402082508e-06, 2.77068142495902e-08,
                                    -2.72614225801306e-10])
        let denominator = polynomial([-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03,
                                      -2.13374055278905e-04, -1.45660718464996e-05])
        return .binary(.div, .binary(.mul, x, numerator), denominator)
    }

    /// This expression with every erf computed by `erfApproximation`.
    public var withVectorizableErf: ScalarExpr {
        switch self {
        case .input, .const: return self
        case .unary(.erf, let a): return Self.erfApproximation(a.withVectorizableErf)
        case .unary(let fn, let a): return .unary(fn, a.withVectorizableErf)
        case .binary(let fn, let a, let b): return .binary(fn, a.withVectorizableErf, b.withVectorizableErf)
        case .select(let c, let a, let b): return .select(c.withVectorizableErf, a.withVectorizableErf, b.withVectorizableErf)
        }
    }
}
