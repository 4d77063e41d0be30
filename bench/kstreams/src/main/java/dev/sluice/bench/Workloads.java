package dev.sluice.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.WindowedSerdes;

/**
 * The processor benchmarks' workloads (docs/benchmarks.md) written for Kafka Streams, the way a
 * Kafka Streams user would: JSON values parsed with Jackson, the DSL, default RocksDB stores and
 * caching. Records have the shapes of the Sluice SQL in bench/src/processor.rs, and the outputs
 * the same bytes layout (windowed keys as key + 8-byte window start), so one verifier checks both.
 *
 * <p>P4 keeps the latest value per key (a 1M-key store) to measure restores.
 *
 * <p>Usage: {@code java -jar sluice-bench-kstreams.jar p1|p2|p3|p4 key=value...} with bootstrap,
 * application, input, users, output, guarantee (exactly_once_v2 | at_least_once), commit (ms),
 * threads, state.
 */
public final class Workloads {
  private static final ObjectMapper JSON = new ObjectMapper();

  private Workloads() {}

  public static void main(String[] args) throws Exception {
    if (args.length < 1) {
      System.err.println("usage: p1|p2|p3 bootstrap=... application=... input=... output=... [users=...]");
      System.exit(2);
    }
    Map<String, String> opt = new HashMap<>();
    for (int i = 1; i < args.length; i++) {
      int eq = args[i].indexOf('=');
      if (eq < 0) {
        System.err.println("not key=value: " + args[i]);
        System.exit(2);
      }
      opt.put(args[i].substring(0, eq), args[i].substring(eq + 1));
    }
    StreamsBuilder builder = new StreamsBuilder();
    KStream<String, String> views =
        builder.stream(opt.get("input"), Consumed.with(Serdes.String(), Serdes.String()));
    String output = opt.get("output");
    switch (args[0]) {
      case "p1" -> views
          .mapValues(Workloads::parse)
          .filter((k, v) -> v != null && v.path("duration").asInt() > 10)
          .mapValues(Workloads::project)
          .to(output, Produced.with(Serdes.String(), Serdes.String()));
      case "p2" -> {
        KTable<String, String> users =
            builder.table(opt.get("users"), Consumed.with(Serdes.String(), Serdes.String()));
        views
            .leftJoin(users, Workloads::join)
            .filter((k, v) -> v != null)
            .to(output, Produced.with(Serdes.String(), Serdes.String()));
      }
      case "p3" -> views
          .mapValues(v -> {
            JsonNode n = parse(v);
            return n == null || !n.hasNonNull("pageid") ? null : n.get("pageid").asText();
          })
          .filter((k, page) -> page != null)
          .groupBy((k, page) -> page, Grouped.with(Serdes.String(), Serdes.String()))
          .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofSeconds(60), Duration.ofHours(24)))
          .count(Materialized.with(Serdes.String(), Serdes.Long()))
          .toStream()
          .mapValues(n -> "{\"VIEWS\":" + n + "}")
          .to(
              output,
              Produced.with(
                  WindowedSerdes.timeWindowedSerdeFrom(String.class, 60_000L), Serdes.String()));
      case "p4" -> views
          .groupByKey()
          .reduce((older, newer) -> newer)
          .toStream()
          .to(output, Produced.with(Serdes.String(), Serdes.String()));
      default -> {
        System.err.println("unknown workload " + args[0]);
        System.exit(2);
      }
    }
    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, opt.get("application"));
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, opt.get("bootstrap"));
    props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, opt.getOrDefault("guarantee", "exactly_once_v2"));
    props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, opt.getOrDefault("commit", "100"));
    props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, opt.getOrDefault("threads", "2"));
    props.put(StreamsConfig.STATE_DIR_CONFIG, opt.getOrDefault("state", "/tmp/kstreams-bench"));
    props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
    // Static membership, as a StatefulSet pod would use: a restarted instance takes its
    // partitions back at once instead of waiting out the session timeout of the one it replaces.
    props.put(StreamsConfig.consumerPrefix("group.instance.id"), opt.get("application") + "-0");
    props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
    props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
    KafkaStreams streams = new KafkaStreams(builder.build(), props);
    CountDownLatch done = new CountDownLatch(1);
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  streams.close(Duration.ofSeconds(30));
                  done.countDown();
                }));
    streams.setUncaughtExceptionHandler(
        e -> {
          System.err.println("stream thread failed: " + e);
          return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse
              .SHUTDOWN_CLIENT;
        });
    streams.start();
    done.await();
  }

  private static JsonNode parse(String text) {
    if (text == null) {
      return null;
    }
    try {
      return JSON.readTree(text);
    } catch (Exception e) {
      return null;
    }
  }

  private static String write(ObjectNode node) {
    try {
      return JSON.writeValueAsString(node);
    } catch (Exception e) {
      throw new IllegalStateException(e);
    }
  }

  /** SELECT userid, pageid, duration, UCASE(region) AS region ... WHERE duration > 10. */
  private static String project(JsonNode v) {
    ObjectNode out = JSON.createObjectNode();
    out.set("PAGEID", v.get("pageid"));
    out.set("DURATION", v.get("duration"));
    JsonNode region = v.get("region");
    out.put("REGION", region == null || region.isNull() ? null : region.asText().toUpperCase());
    return write(out);
  }

  /** SELECT p.userid, pageid, duration, u.name, u.region AS uregion ... LEFT JOIN users u. */
  private static String join(String view, String user) {
    JsonNode v = parse(view);
    if (v == null) {
      return null;
    }
    JsonNode u = parse(user);
    ObjectNode out = JSON.createObjectNode();
    out.set("PAGEID", v.get("pageid"));
    out.set("DURATION", v.get("duration"));
    out.set("NAME", u == null ? null : u.get("name"));
    out.set("UREGION", u == null ? null : u.get("region"));
    return write(out);
  }
}
