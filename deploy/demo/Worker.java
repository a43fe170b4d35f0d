// The demo's JVM service: about 5 MB of short-lived garbage a second, so the
// young generation is collected every few seconds.
public class Worker {
  public static void main(String[] args) throws Exception {
    java.util.ArrayList<byte[]> batch = new java.util.ArrayList<>();
    while (true) {
      for (int i = 0; i < 50; i++) batch.add(new byte[1024]);
      batch.clear();
      Thread.sleep(10);
    }
  }
}
