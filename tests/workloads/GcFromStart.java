// Churns from main's first statement for args[1] seconds (the JVM collects
// while it starts, too: the source launcher compiles this file first), writes
// args[0] ("done") and idles. The truth is -Xlog:gc: one "Pause" line per
// collection, from the JVM's start.
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;

public class GcFromStart {
  public static void main(String[] args) throws Exception {
    long end = System.nanoTime() + (long) (Double.parseDouble(args[1]) * 1e9);
    ArrayList<byte[]> keep = new ArrayList<>();
    while (System.nanoTime() < end) {
      keep.add(new byte[1024]);
      if (keep.size() > 20000) keep = new ArrayList<>();
    }
    keep = null;
    Path tmp = Path.of(args[0] + ".tmp");
    Files.writeString(tmp, "done\n");
    Files.move(tmp, Path.of(args[0]), StandardCopyOption.ATOMIC_MOVE);
    Thread.sleep(300_000);
  }
}
