// GC workload for the JVM: waits for <go-file>, churns the heap for <seconds>
// (short-lived garbage plus a sliding window of retained arrays, so there are
// young pauses and promotions), asks for a few full collections, then writes
// <done-file> and idles (no allocation, so no further pauses).
// Ground truth is the JVM's own -Xlog:gc file, set by whoever starts it.
// Run as a single-file source: java -Xlog:gc:file=gc.log GcChurn.java go done 20
import java.nio.file.Files;
import java.nio.file.Path;

public class GcChurn {
  static volatile Object sink;

  public static void main(String[] args) throws Exception {
    Path go = Path.of(args[0]);
    Path done = Path.of(args[1]);
    double seconds = Double.parseDouble(args[2]);
    int fulls = args.length > 3 ? Integer.parseInt(args[3]) : 3;
    while (!Files.exists(go)) Thread.sleep(20);

    // GC_CHURN_WORK=N: a fixed amount of work (N chunks) instead of a time,
    // for benchmarks; the churn time is written to <done-file> either way.
    String work = System.getenv("GC_CHURN_WORK");
    long chunks = work != null ? Long.parseLong(work) : Long.MAX_VALUE;
    Object[] window = new Object[4096];
    long t0 = System.nanoTime();
    long end = work != null ? Long.MAX_VALUE : t0 + (long) (seconds * 1e9);
    long fullEvery = fulls > 0 ? (long) (seconds * 1e9 / (fulls + 1)) : Long.MAX_VALUE;
    long nextFull = System.nanoTime() + fullEvery;
    long i = 0;
    for (long c = 0; c < chunks && System.nanoTime() < end; c++) {
      for (int k = 0; k < 2000; k++, i++) {
        byte[] b = new byte[64 + (int) (i % 4096)];
        sink = b;
        if (i % 16 == 0) window[(int) ((i / 16) % window.length)] = b;
      }
      if (System.nanoTime() > nextFull) {
        System.gc();
        nextFull += fullEvery;
      }
      // Leave the second core to the tracer; pauses, not throughput, matter here.
      if (i % 200000 == 0) Thread.sleep(1);
    }
    Files.writeString(done, "done " + (System.nanoTime() - t0) / 1e9 + "\n");
    Thread.sleep(Long.MAX_VALUE);
  }
}
