//! Continuous batching and the prompt cache of the MLX llm provider, through the ABI on
//! the real SmolLM2 weights: requests that join a running call get the answers they get
//! alone, a request that stops or is refused leaves the others alone, and a second chat
//! turn reuses the first turn's KV cache without changing its answer.
//!
//! "The same answer" is checked as the other parity tests do: token for token with
//! log-probabilities equal up to float32 rounding, until a near-tie. A row in a batch,
//! or a prompt read partly from the cache, is the same arithmetic as alone but summed in
//! another order (other matrix shapes, other chunk boundaries): float32 reassociation
//! moves a logit by a few ulps per operation, ~1e-4 relative after 30 layers, a few 1e-3
//! in log-probability for logits of magnitude ≤ 30. `TIE` = 0.02 is an order above that and
//! far below what a row reading another row's keys (or a misplaced position) does to the
//! distribution; where two candidates are within it of each other either may be picked,
//! and the sequences may part there.

mod util;

use engine::{request::Generate, Engine, GenerateSink, ModelEntry, PluginSet, Registry, Source};
use plugin_api::{
    text::{
        ChatMessage, FinishReason, GenerateOutput, GenerateRequest, SamplingParams, StreamControl,
        StreamEvent, TextInput,
    },
    ErrorKind, ModelKind, PluginError,
};
use std::collections::{BTreeMap, VecDeque};

fn engine() -> Engine {
    let mut set = PluginSet::default();
    set.load(&util::dylib("mlxengine_llm"))
        .expect("llm plugin loads");
    let engine = Engine::new(Registry::new(), set);
    let dir = engine::paths::models_dir().join("smollm2-135m-instruct");
    assert!(
        dir.is_dir(),
        "{} is missing: run scripts/setup.sh",
        dir.display()
    );
    engine
        .add_model(ModelEntry::new(
            "smol",
            ModelKind::LLM,
            "llama",
            Source::Path(dir),
        ))
        .unwrap();
    engine
}

fn chat(turns: &[&str]) -> TextInput {
    let messages: Vec<ChatMessage> = turns
        .iter()
        .enumerate()
        .map(|(i, t)| ChatMessage::text(if i % 2 == 0 { "user" } else { "assistant" }, t))
        .collect();
    TextInput {
        prompt: "".into(),
        messages: messages.into(),
    }
}

fn raw(prompt: &str) -> TextInput {
    TextInput {
        prompt: prompt.into(),
        messages: Default::default(),
    }
}

fn request(inputs: Vec<TextInput>, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        inputs: inputs.into(),
        max_tokens,
        stream: true,
        logprobs: true,
        ..Default::default()
    }
}

/// Log-probability difference under which two picks are a near-tie (see the top).
const TIE: f32 = 0.02;

/// `got` is `want`: the same tokens with log-probabilities within rounding, up to a
/// near-tie where they may part; if they never part, the same text and finish.
fn agree(got: &GenerateOutput, want: &GenerateOutput, what: &str) {
    assert_eq!(got.prompt_tokens, want.prompt_tokens, "{what}");
    for (k, (a, b)) in got.tokens.iter().zip(want.tokens.iter()).enumerate() {
        let (la, lb) = (got.logprobs[k], want.logprobs[k]);
        assert!(
            (la - lb).abs() < TIE,
            "{what}: token {k} ({a} vs {b}): log-probability {la} vs {lb}"
        );
        if a != b {
            eprintln!("{what}: parted at a near-tie at token {k} ({la} vs {lb})");
            return;
        }
    }
    assert_eq!(got.tokens, want.tokens, "{what}");
    assert_eq!(got.text, want.text, "{what}");
    assert_eq!(got.finish, want.finish, "{what}");
}

/// The host's side as the server's scheduler plays it: requests offered to the running
/// call after so many events, events and outputs recorded by sequence index.
#[derive(Default)]
struct Host {
    joins: VecDeque<(usize, GenerateRequest)>,
    events: usize,
    streamed: BTreeMap<u32, String>,
    finished: BTreeMap<u32, GenerateOutput>,
    cached: BTreeMap<u32, u32>,
    rejected: Vec<(ErrorKind, String)>,
    /// Sequence index whose events answer Stop.
    stop: Option<u32>,
}

impl GenerateSink for Host {
    fn event(&mut self, ev: &StreamEvent) -> StreamControl {
        self.events += 1;
        self.streamed
            .entry(ev.index)
            .or_default()
            .push_str(ev.text.as_str());
        if self.stop == Some(ev.index) && ev.finish != FinishReason::CANCELLED {
            return StreamControl::Stop;
        }
        StreamControl::Continue
    }
    fn poll_join(&mut self) -> Option<Generate> {
        match self.joins.front() {
            Some((after, _)) if self.events >= *after => {
                let (_, req) = self.joins.pop_front().unwrap();
                Some(util::gen(req))
            }
            _ => None,
        }
    }
    fn finished(&mut self, index: u32, output: &GenerateOutput) {
        assert!(
            self.finished.insert(index, output.clone()).is_none(),
            "sequence {index} finished twice"
        );
    }
    fn rejected(&mut self, error: &PluginError) {
        self.rejected.push((error.kind, error.message.to_string()));
    }
    fn prompt_cached(&mut self, index: u32, tokens: u32) {
        self.cached.insert(index, tokens);
    }
}

fn call(e: &Engine, req: &GenerateRequest, host: &mut Host) -> plugin_api::text::GenerateResponse {
    let req = util::gen(req.clone());
    let m = e.load_for_generate("smol", None, &req).unwrap();
    e.generate_with(&m, &req, host).unwrap()
}

/// `req` alone, with the prompt cache out of the way: its outputs.
fn alone(e: &Engine, req: &GenerateRequest) -> Vec<GenerateOutput> {
    let mut req = req.clone();
    req.options = r#"{"prompt_cache":false}"#.into();
    call(e, &req, &mut Host::default()).outputs.into_vec()
}

#[test]
fn requests_that_join_a_running_batch_get_their_own_answers() {
    let e = engine();
    let own = request(vec![chat(&["What is the capital of France?"])], 24);
    let story = request(vec![raw("Once upon a time, in a small village,")], 16);
    // Two inputs in one request; one of them longer than everything running (the batch
    // is padded at the front to meet it).
    let pair = request(
        vec![
            chat(&["List three prime numbers, then explain in one sentence why each is prime."]),
            raw("The quick brown fox"),
        ],
        12,
    );
    // Sampled on the host: the batch leaves device picks while it runs.
    let mut sampled = request(vec![raw("My favourite colour is")], 10);
    sampled.sampling = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: Some(7).into(),
        ..SamplingParams::default()
    };
    let mut host = Host {
        joins: VecDeque::from([(2, story.clone()), (5, pair.clone()), (9, sampled.clone())]),
        ..Default::default()
    };
    let resp = call(&e, &own, &mut host);
    assert!(host.joins.is_empty(), "every request joined");
    assert!(host.rejected.is_empty(), "{:?}", host.rejected);
    // Indices: the call's input, then each joined request's inputs in the order they joined.
    let expect = [
        (0, alone(&e, &own)[0].clone()),
        (1, alone(&e, &story)[0].clone()),
        (2, alone(&e, &pair)[0].clone()),
        (3, alone(&e, &pair)[1].clone()),
        (4, alone(&e, &sampled)[0].clone()),
    ];
    assert_eq!(host.finished.len(), expect.len());
    for (i, want) in &expect {
        let got = &host.finished[i];
        agree(got, want, &format!("sequence {i}"));
        assert_eq!(host.streamed[i], got.text.as_str(), "sequence {i} streamed");
    }
    // The call answers for its own input only.
    assert_eq!(resp.outputs.len(), 1);
    assert_eq!(resp.outputs[0].tokens, host.finished[&0].tokens);
    assert_eq!(
        resp.stats.generated_tokens,
        resp.outputs[0].tokens.len() as u64
    );
}

#[test]
fn a_joined_request_that_stops_or_cannot_run_leaves_the_others_alone() {
    let e = engine();
    let own = request(vec![raw("The history of the printing press")], 20);
    let stopped = request(vec![raw("Once upon a time, in a small village,")], 30);
    // Its prompt alone fills the context: refused by name, nothing else changes.
    let long = "word ".repeat(9000);
    let too_long = request(vec![raw(&long)], 4);
    let mut host = Host {
        joins: VecDeque::from([(1, stopped), (3, too_long)]),
        stop: Some(1),
        ..Default::default()
    };
    let resp = call(&e, &own, &mut host);
    agree(&resp.outputs[0], &alone(&e, &own)[0], "the call's own");
    assert_eq!(host.finished[&0].tokens, resp.outputs[0].tokens);
    let s = &host.finished[&1];
    assert_eq!(s.finish, FinishReason::CANCELLED);
    assert_eq!(s.tokens.len(), 1, "stopped at its first event");
    assert_eq!(host.rejected.len(), 1, "{:?}", host.rejected);
    let (kind, msg) = &host.rejected[0];
    assert_eq!(*kind, ErrorKind::CONTEXT_LENGTH, "{msg}");
    assert!(msg.contains("input #0") && msg.contains("context"), "{msg}");
    assert_eq!(host.finished.len(), 2, "the refused request took no index");
}

#[test]
fn a_second_chat_turn_reuses_the_first_turns_cache() {
    let e = engine();
    let first = request(vec![chat(&["Name a large city in Japan."])], 16);
    let mut host = Host::default();
    let one = call(&e, &first, &mut host);
    assert_eq!(host.cached[&0], 0, "nothing cached before the first turn");
    let reply = one.outputs[0].text.to_string();
    let second = request(
        vec![chat(&[
            "Name a large city in Japan.",
            &reply,
            "And one in France?",
        ])],
        16,
    );
    let mut host = Host::default();
    let two = call(&e, &second, &mut host);
    let reused = host.cached[&0];
    // The templated first turn is a prefix of the second's prompt (up to where the
    // template closes the assistant's turn).
    assert!(
        reused as usize >= one.outputs[0].prompt_tokens as usize,
        "reused {reused} of {} prompt tokens; the first turn's prompt had {}",
        two.outputs[0].prompt_tokens,
        one.outputs[0].prompt_tokens
    );
    assert!(reused < two.outputs[0].prompt_tokens);
    agree(&two.outputs[0], &alone(&e, &second)[0], "the second turn");
    // A request that opts out neither reuses nor reports.
    let mut host = Host::default();
    let mut off = second.clone();
    off.options = r#"{"prompt_cache":false}"#.into();
    call(&e, &off, &mut host);
    assert!(host.cached.is_empty(), "{:?}", host.cached);
}
