import DDPKernels
import Foundation
import Passes
import Runtime

/// Reading and writing the JSON file `ddepc tune` writes and `ddepc compile
/// --conv-costs` reads.
public enum ConvCostFile {
    /// The table in `url`, or an error naming the file and what to do.
    public static func read(_ url: URL) throws -> ConvCostTable {
        let data = try Data(contentsOf: url)
        let table: ConvCostTable
        do {
            table = try JSONDecoder().decode(ConvCostTable.self, from: data)
        } catch {
            throw RuntimeError("\(url.path) is not a convolution cost table that ddepc tune wrote (\(describe(error))); write one with `ddepc tune MODEL -o \(url.path)`")
        }
        guard table.format == ConvCostTable.format else {
            throw RuntimeError("\(url.path) is a convolution cost table of format \(table.format); this ddepc reads format \(ConvCostTable.format). Measure again with `ddepc tune MODEL -o \(url.path)`")
        }
        if let bad = table.measurements.first(where: { measured in
            measured.seconds.contains { !ConvCostTable.algorithms.contains($0.key) || !($0.value > 0 && $0.value.isFinite) }
        }) {
            throw RuntimeError("\(url.path): the times of \(bad.convolution) are not positive seconds of \(ConvCostTable.algorithms.joined(separator: ", ")) (\(bad.seconds)); measure again with `ddepc tune MODEL -o \(url.path)`")
        }
        return table
    }

    /// Why a table measured elsewhere may choose wrongly here; nil when it
    /// was measured at this machine's kernels' ISA and thread count.
    public static func mismatch(of table: ConvCostTable, at url: URL) -> String? {
        let isa = String(cString: ddp_gemm_isa()), threads = Int(ddp_parallel_threads())
        guard table.isa != isa || table.threads != threads else { return nil }
        return "\(url.path) was measured with the \(table.isa) kernels on \(table.threads) thread(s) (\(table.cpu)); here they run \(isa) on \(threads). Its choices may be slower here: run `ddepc tune` on this machine."
    }

    /// Throws unless `url` is free or holds a cost table (ddepc's own, of
    /// any format): any other file there is the user's and is left alone.
    public static func requireReplaceable(_ url: URL) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else { return }
        /// The fields every cost table has had.
        struct Identity: Decodable {
            var format: Int
            var isa: String
            var threads: Int
            var cpu: String
        }
        let ours = !isDirectory.boolValue && (try? JSONDecoder().decode(Identity.self, from: Data(contentsOf: url))) != nil
        guard ours else {
            throw RuntimeError("\(url.path) exists and is not a convolution cost table; refusing to replace it (nothing was changed). Choose another -o path.")
        }
    }

    /// Writes `table` to `url`, replacing only a cost table.
    public static func write(_ table: ConvCostTable, to url: URL) throws {
        try requireReplaceable(url)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeAtomically(try encoder.encode(table), to: url)
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let context): return context.debugDescription
        case DecodingError.keyNotFound(let key, _): return "no \"\(key.stringValue)\""
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return context.debugDescription + " at " + context.codingPath.map(\.stringValue).joined(separator: ".")
        default: return "\(error)"
        }
    }
}
