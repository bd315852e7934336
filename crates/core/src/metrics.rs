//! Prometheus metrics every worker serves on `/metrics`.

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The metrics of one process.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Messages handled, by stage, queue and outcome (`ok`, `retry`, `dead_letter`, `requeue`).
    pub messages: IntCounterVec,
    /// Failures by stage, class and code.
    pub failures: IntCounterVec,
    /// Seconds per message, by stage.
    pub duration: HistogramVec,
    /// Messages in progress, by stage.
    pub in_flight: IntGaugeVec,
    /// Messages handled together, by stage.
    pub batch_size: HistogramVec,
    /// Provider tokens, by tier, model and direction (`input`, `output`).
    pub tokens: IntCounterVec,
    /// Provider cost in USD, by tier and model.
    pub cost_usd: CounterVec,
    /// 1 while a queue's consumer is connected.
    pub consumer_up: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let messages = IntCounterVec::new(
            Opts::new("reelfleet_messages_total", "Messages handled, by stage, queue and outcome"),
            &["stage", "queue", "outcome"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new("reelfleet_failures_total", "Stage failures, by stage, error class and code"),
            &["stage", "class", "code"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new("reelfleet_stage_duration_seconds", "Seconds to handle one message, by stage")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0]),
            &["stage"],
        )
        .expect("valid metric");
        let in_flight =
            IntGaugeVec::new(Opts::new("reelfleet_in_flight", "Messages in progress, by stage"), &["stage"])
                .expect("valid metric");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("reelfleet_batch_size", "Messages handled together, by stage")
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]),
            &["stage"],
        )
        .expect("valid metric");
        let tokens = IntCounterVec::new(
            Opts::new("reelfleet_provider_tokens_total", "Provider tokens billed, by tier, model and direction"),
            &["tier", "model", "direction"],
        )
        .expect("valid metric");
        let cost_usd = CounterVec::new(
            Opts::new("reelfleet_provider_cost_usd_total", "Provider cost in USD, by tier and model"),
            &["tier", "model"],
        )
        .expect("valid metric");
        let consumer_up = IntGaugeVec::new(
            Opts::new("reelfleet_consumer_up", "1 while the consumer of a queue is connected"),
            &["queue"],
        )
        .expect("valid metric");
        for c in [
            Box::new(messages.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(batch_size.clone()),
            Box::new(tokens.clone()),
            Box::new(cost_usd.clone()),
            Box::new(consumer_up.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self { registry, messages, failures, duration, in_flight, batch_size, tokens, cost_usd, consumer_up }
    }

    /// Registers a collector of a worker kind's own (the SQS bridge's), served
    /// with the rest.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}
