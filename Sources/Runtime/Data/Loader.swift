import ABI
import Foundation

/// The order examples are visited in: epoch after epoch, each a fresh
/// permutation drawn from the seed and the epoch number alone. Position `p`
/// (counted over the whole run: step·batch + slot) is example
/// `permutation(p / count)[p % count]`, so any step's batch can be built
/// without building the ones before it — which is what makes resuming and
/// background loading deterministic.
public final class SampleOrder: @unchecked Sendable {
    public let count: Int
    public let seed: UInt64
    private let lock = NSLock()
    private var permutations: [Int: [Int]] = [:]

    public init(count: Int, seed: UInt64) {
        precondition(count > 0)
        self.count = count
        self.seed = seed
    }

    public func permutation(epoch: Int) -> [Int] {
        lock.withLock {
            if let cached = permutations[epoch] { return cached }
            var rng = SplitMix64(seed: seed, keys: RandomStream.dataOrder.rawValue, UInt64(epoch))
            var order = Array(0..<count)
            for i in stride(from: count - 1, to: 0, by: -1) {
                order.swapAt(i, Int.random(in: 0...i, using: &rng))
            }
            // Batches are made in order, so the two most recent epochs suffice.
            if permutations.count >= 2, let oldest = permutations.keys.min() { permutations[oldest] = nil }
            permutations[epoch] = order
            return order
        }
    }

    /// The example at run position `position` and the following `offset`-th
    /// one in the same epoch's order (wrapping), for skipping bad files.
    public func index(at position: Int, offset: Int = 0) -> Int {
        let epoch = position / count
        return permutation(epoch: epoch)[(position % count + offset) % count]
    }
}

/// One step's inputs for an entry point, by input name (`x`, `labels`, ...).
public struct StepBatch: @unchecked Sendable {
    public var step: Int
    public var floats: [String: [Float]] = [:]
    public var ints: [String: [Int32]] = [:]
    /// The examples used, by name (for logs and tests).
    public var names: [String] = []
}

/// Makes the training batch of any step from a data source: examples in
/// `SampleOrder`, each augmented with a generator keyed by its run
/// position. `batch(step:)` is a pure function of the step (given the same
/// files), whatever thread calls it and whatever was made before.
public final class BatchMaker: @unchecked Sendable {
    public let source: any ExampleSource
    public let order: SampleOrder
    public let augmentation: Augmentation
    public let batchSize: Int
    public let seed: UInt64
    public let withLabels: Bool
    public let onBadFile: BadFilePolicy
    /// Where skipped files are reported (once each).
    public let warn: @Sendable (String) -> Void
    /// Decode the examples of a batch on this many threads.
    public let threads: Int
    /// Data-parallel runs: the global batch of a step is `processes` ×
    /// `batchSize` consecutive positions of the order, and this process makes
    /// part `rank` of it. A position's example and augmentation do not depend
    /// on how the global batch is split.
    public let processes: Processes

    private let lock = NSLock()
    private var bad: [Int: String] = [:]
    private var cache: [Int: (Image, LabelMap?)] = [:]
    private var cachedBytes = 0
    /// Decoded examples are kept in memory up to this many bytes (small data
    /// sets are then decoded once).
    public var cacheLimit = 512 << 20

    public init(source: any ExampleSource, batchSize: Int, augmentation: Augmentation, seed: UInt64, withLabels: Bool,
                onBadFile: BadFilePolicy = .fail, threads: Int = 1, processes: Processes = .single,
                warn: @escaping @Sendable (String) -> Void = { _ in }) {
        self.source = source
        self.order = SampleOrder(count: source.count, seed: seed)
        self.batchSize = batchSize
        self.augmentation = augmentation
        self.seed = seed
        self.withLabels = withLabels
        self.onBadFile = onBadFile
        self.threads = max(1, threads)
        self.processes = processes
        self.warn = warn
    }

    /// The number of steps that make `epochs` passes over the data (the last
    /// batch may run into the next epoch's order).
    public func steps(forEpochs epochs: Double) -> Int {
        max(1, Int((epochs * Double(source.count) / Double(batchSize * processes.count)).rounded(.up)))
    }

    /// The batch of `step`: `x` [B,3,S,S] and, with labels, `labels` [B,S,S].
    public func batch(step: Int) throws -> StepBatch {
        let s = augmentation.cropSize, plane = s * s
        var x = [Float](repeating: 0, count: batchSize * 3 * plane)
        var labels = [Int32](repeating: Int32(LabelMap.ignoreLabel), count: withLabels ? batchSize * plane : 0)
        var names = [String](repeating: "", count: batchSize)
        var errors = [Error?](repeating: nil, count: batchSize)
        x.withUnsafeMutableBufferPointer { xs in
            labels.withUnsafeMutableBufferPointer { ls in
                names.withUnsafeMutableBufferPointer { ns in
                    errors.withUnsafeMutableBufferPointer { es in
                        let (xb, lb, nb, eb) = (xs, ls, ns, es)  // captured as lets
                        let work = { (slot: Int) in
                            do {
                                let position = (step * self.processes.count + self.processes.rank) * self.batchSize + slot
                                let (index, image, mask) = try self.example(at: position)
                                var rng = SplitMix64(seed: self.seed, keys: RandomStream.augmentation.rawValue, UInt64(position))
                                let xSlice = UnsafeMutableBufferPointer(rebasing: xb[(slot * 3 * plane)..<((slot + 1) * 3 * plane)])
                                let lSlice = self.withLabels ? UnsafeMutableBufferPointer(rebasing: lb[(slot * plane)..<((slot + 1) * plane)]) : nil
                                self.augmentation.apply(image, mask: self.withLabels ? mask : nil, rng: &rng, x: xSlice, labels: lSlice)
                                nb[slot] = self.source.name(at: index)
                            } catch {
                                eb[slot] = error
                            }
                        }
                        if threads > 1 && batchSize > 1 {
                            DispatchQueue.concurrentPerform(iterations: batchSize, execute: work)
                        } else {
                            for slot in 0..<batchSize { work(slot) }
                        }
                    }
                }
            }
        }
        if let error = errors.lazy.compactMap({ $0 }).first { throw error }
        var result = StepBatch(step: step, names: names)
        result.floats[StepSignature.image] = x
        if withLabels { result.ints[StepSignature.labels] = labels }
        return result
    }

    /// The example at a run position: the one the order names, or with
    /// `--on-bad-file skip` the next usable one in the same epoch's order.
    func example(at position: Int) throws -> (Int, Image, LabelMap?) {
        for offset in 0..<order.count {
            let index = order.index(at: position, offset: offset)
            if let (image, mask) = lock.withLock({ cache[index] }) { return (index, image, mask) }
            if lock.withLock({ bad[index] }) != nil { continue }
            do {
                let (image, mask) = try source.load(at: index)
                if withLabels && mask == nil {
                    throw DataError(.invalid, file: source.name(at: index), "has no mask")
                }
                lock.withLock {
                    let bytes = image.pixels.count + (mask?.labels.count ?? 0)
                    if cachedBytes + bytes <= cacheLimit {
                        cache[index] = (image, mask)
                        cachedBytes += bytes
                    }
                }
                return (index, image, mask)
            } catch let error as DataError where error.kind == .unreadable && onBadFile == .skip {
                let first = lock.withLock { () -> Bool in
                    defer { bad[index] = error.description }
                    return bad[index] == nil
                }
                if first { warn("warning: skipping \(error.description)") }
            }
        }
        throw DataError(.invalid, file: nil, "every one of the \(order.count) files is unreadable (see the warnings above); nothing to train on")
    }

    /// The files skipped so far, with the reasons.
    public var skippedFiles: [String] { lock.withLock { bad.keys.sorted().map { bad[$0]! } } }
}

/// Makes items for consecutive steps on one background thread, at most
/// `depth` ahead of the consumer, and hands them out in order. The producer
/// only calls `produce(step)`, so what each item holds does not depend on
/// timing. The thread ends after its current item once the prefetcher is
/// cancelled or released.
public final class Prefetcher<Item>: @unchecked Sendable {
    /// What the producer thread and the consumer share (the thread does not
    /// keep the prefetcher itself alive).
    private final class Channel: @unchecked Sendable {
        let condition = NSCondition()
        var queue: [Result<Item, Error>] = []
        var cancelled = false
        var finished = false
        var waits = 0
    }

    private let channel = Channel()

    public init(steps: Range<Int>, depth: Int = 3, produce: @escaping @Sendable (Int) throws -> Item) {
        let channel = self.channel, depth = max(1, depth)
        let thread = Thread {
            defer {
                channel.condition.lock()
                channel.finished = true
                channel.condition.broadcast()
                channel.condition.unlock()
            }
            for step in steps {
                channel.condition.lock()
                while channel.queue.count >= depth && !channel.cancelled { channel.condition.wait() }
                let stop = channel.cancelled
                channel.condition.unlock()
                if stop { return }
                let result = Result { try produce(step) }
                channel.condition.lock()
                channel.queue.append(result)
                channel.condition.broadcast()
                channel.condition.unlock()
                if case .failure = result { return }
            }
        }
        thread.name = "ddepc-loader"
        thread.start()
    }

    /// The next item, waiting for it if it is not ready; rethrows the
    /// producer's error for that step.
    public func next() throws -> Item {
        channel.condition.lock()
        defer { channel.condition.unlock() }
        if channel.queue.isEmpty { channel.waits += 1 }
        while channel.queue.isEmpty {
            if channel.finished { throw RuntimeError("the data loader has no more batches (a ddepc bug)") }
            channel.condition.wait()
        }
        let result = channel.queue.removeFirst()
        channel.condition.broadcast()
        return try result.get()
    }

    /// How many times `next()` found no item ready and had to wait.
    public var waits: Int {
        channel.condition.lock()
        defer { channel.condition.unlock() }
        return channel.waits
    }

    public func cancel() {
        channel.condition.lock()
        channel.cancelled = true
        channel.condition.broadcast()
        channel.condition.unlock()
    }

    deinit { cancel() }
}
