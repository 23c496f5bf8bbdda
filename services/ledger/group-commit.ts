// Group commit: concurrent CreateTransfers calls are queued and committed together, so that many
// callers share one database commit instead of each paying for its own. There is no timer: while
// one commit is in flight the next group gathers, so a caller waits at most about one commit for
// its turn, and a lone caller is committed at once.
import type { ItemOutcome, TransferInput } from "./engine.js";

interface Waiting {
  readonly batch: TransferInput[];
  readonly signal: AbortSignal | undefined;
  resolve(outcomes: ItemOutcome[]): void;
  reject(error: unknown): void;
}

export interface GroupCommitStats {
  groups: number;
  batches: number;
  transfers: number;
}

export class GroupCommitter {
  readonly #queue: Waiting[] = [];
  #running: Promise<void> | undefined;
  readonly stats: GroupCommitStats = { groups: 0, batches: 0, transfers: 0 };

  constructor(
    private readonly commit: (batch: TransferInput[]) => Promise<ItemOutcome[]>,
    /** Most transfers in one commit; a single caller's batch may be larger and goes alone. */
    private readonly groupTransfersMax: number,
  ) {}

  submit(batch: TransferInput[], signal?: AbortSignal): Promise<ItemOutcome[]> {
    signal?.throwIfAborted();
    return new Promise((resolve, reject) => {
      this.#queue.push({ batch, signal, resolve, reject });
      this.#running ??= this.#drain().finally(() => (this.#running = undefined));
    });
  }

  /** Resolves once everything queued so far has been committed or refused. */
  async idle(): Promise<void> {
    while (this.#running) await this.#running;
  }

  async #drain(): Promise<void> {
    while (this.#queue.length > 0) {
      const group = this.#takeGroup();
      if (group.length > 0) await this.#commitGroup(group);
    }
  }

  /**
   * Takes callers from the front of the queue up to the size limit. A caller whose deadline has
   * passed is dropped before it is written; one that repeats an id already in the group waits for
   * the next group, where it sees the first one's outcome.
   */
  #takeGroup(): Waiting[] {
    const group: Waiting[] = [];
    const ids = new Set<string>();
    let size = 0;
    for (let index = 0; index < this.#queue.length; ) {
      const waiting = this.#queue[index] as Waiting;
      if (waiting.signal?.aborted) {
        this.#queue.splice(index, 1);
        waiting.reject(waiting.signal.reason);
        continue;
      }
      const fits = group.length === 0 || size + waiting.batch.length <= this.groupTransfersMax;
      if (!fits) break;
      if (waiting.batch.some((transfer) => ids.has(transfer.id))) {
        index++;
        continue;
      }
      this.#queue.splice(index, 1);
      group.push(waiting);
      size += waiting.batch.length;
      for (const transfer of waiting.batch) ids.add(transfer.id);
    }
    return group;
  }

  async #commitGroup(group: Waiting[]): Promise<void> {
    try {
      const outcomes = await this.commit(group.flatMap((waiting) => waiting.batch));
      this.stats.groups++;
      this.stats.batches += group.length;
      this.stats.transfers += outcomes.length;
      let offset = 0;
      for (const waiting of group) {
        waiting.resolve(outcomes.slice(offset, offset + waiting.batch.length));
        offset += waiting.batch.length;
      }
    } catch (error) {
      if (group.length === 1) {
        (group[0] as Waiting).reject(error);
        return;
      }
      // One caller's batch must not fail the others: commit each on its own.
      for (const waiting of group) await this.#commitGroup([waiting]);
    }
  }
}
