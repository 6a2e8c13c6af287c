//! The context window: which of a conversation's messages a model call
//! sends. The system prompt, the current turn (the last user message and
//! what the run added after it) and the tools always go; of the earlier
//! messages, as many of the most recent as fit the agent's budget, the
//! oldest left out first. An assistant message that called tools goes with
//! its tool results or not at all, and the history sent starts at a user
//! message, so no chat template sees a result without its call or a reply
//! without its question.
//!
//! Tokens are counted with the model's own tokenizer where it is known
//! (OpenAI's encodings, from `tiktoken-rs`, by model name) and otherwise
//! estimated: one token per three bytes of text, rounded up, which counts
//! more than the Llama, Mistral and Qwen tokenizers do for English text and
//! code (about four bytes a token). Each message adds [`MESSAGE_OVERHEAD`].

use tiktoken_rs::{CoreBPE, tokenizer::Tokenizer};

use crate::llm::{ChatMessage, ToolSpec};

/// The context budget of an agent whose model's window is not known.
pub const DEFAULT_CONTEXT_TOKENS: u32 = 8192;
/// The room kept for the reply when the agent sets no `max_tokens`.
pub const DEFAULT_REPLY_TOKENS: u32 = 1024;
/// Tokens a message costs besides its text (its role and separators: three
/// in OpenAI's chat format; one more here to stay on the safe side).
pub const MESSAGE_OVERHEAD: usize = 4;
/// Tokens that prime the reply, once per request.
const REPLY_PRIMING: usize = 3;

/// How an agent's model counts tokens.
#[derive(Clone, Copy)]
pub enum Counter {
    /// The model's own tokenizer.
    Bpe(&'static CoreBPE),
    /// The estimate: a token per three bytes, rounded up.
    Estimate,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Counter::Bpe(_) => "Bpe",
            Counter::Estimate => "Estimate",
        })
    }
}

impl Counter {
    /// The tokenizer of `model` when it is one of OpenAI's, else the estimate.
    pub fn for_model(model: &str) -> Counter {
        match tiktoken_rs::tokenizer::get_tokenizer(model) {
            Some(Tokenizer::O200kBase) => Counter::Bpe(tiktoken_rs::o200k_base_singleton()),
            Some(Tokenizer::O200kHarmony) => Counter::Bpe(tiktoken_rs::o200k_harmony_singleton()),
            Some(Tokenizer::Cl100kBase) => Counter::Bpe(tiktoken_rs::cl100k_base_singleton()),
            Some(Tokenizer::P50kBase | Tokenizer::P50kEdit) => {
                Counter::Bpe(tiktoken_rs::p50k_base_singleton())
            }
            Some(Tokenizer::R50kBase | Tokenizer::Gpt2) => {
                Counter::Bpe(tiktoken_rs::r50k_base_singleton())
            }
            None => Counter::Estimate,
        }
    }

    /// The tokens of `text`.
    pub fn text(&self, text: &str) -> usize {
        match self {
            Counter::Bpe(bpe) => bpe.count_ordinary(text),
            Counter::Estimate => text.len().div_ceil(3),
        }
    }

    /// The tokens of one message, as sent.
    pub fn message(&self, message: &ChatMessage) -> usize {
        MESSAGE_OVERHEAD
            + match message {
                ChatMessage::System(text) | ChatMessage::User(text) => self.text(text),
                ChatMessage::Assistant {
                    content,
                    tool_calls,
                    reasoning,
                } => {
                    self.text(content)
                        + reasoning.as_deref().map_or(0, |text| self.text(text))
                        + tool_calls
                            .iter()
                            .map(|call| {
                                MESSAGE_OVERHEAD
                                    + self.text(&call.name)
                                    + self.text(&call.arguments)
                                    + self.text(call.upstream_id())
                            })
                            .sum::<usize>()
                }
                ChatMessage::Tool { call_id, content } => self.text(call_id) + self.text(content),
            }
    }

    /// The tokens the tools' definitions take in the prompt.
    pub fn tools(&self, tools: &[ToolSpec]) -> usize {
        tools
            .iter()
            .map(|tool| {
                MESSAGE_OVERHEAD
                    + self.text(&tool.name)
                    + self.text(&tool.description)
                    + self.text(&tool.parameters.to_string())
            })
            .sum()
    }
}

/// An agent's context window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The model's context, in tokens: prompt and reply together.
    pub tokens: u32,
    /// The room kept for the reply.
    pub reply_tokens: u32,
    /// How its tokens are counted.
    pub counter: Counter,
}

/// What one model call sends.
#[derive(Debug)]
pub struct Fitted {
    /// The messages.
    pub messages: Vec<ChatMessage>,
    /// How many of the conversation's messages were left out.
    pub dropped: usize,
    /// Their tokens, with the tools', as counted.
    pub tokens: usize,
}

impl Window {
    /// The tokens the prompt may take: the window less the reply's room.
    pub fn budget(&self) -> usize {
        self.tokens.saturating_sub(self.reply_tokens) as usize
    }

    /// The messages of `history` that fit, with `tools` on offer.
    pub fn fit(&self, history: &[ChatMessage], tools: &[ToolSpec]) -> Fitted {
        let counter = self.counter;
        // The system prompt, then the earlier messages, then the current
        // turn from its user message on.
        let system = history
            .iter()
            .take_while(|m| matches!(m, ChatMessage::System(_)))
            .count();
        let current = history
            .iter()
            .rposition(|m| matches!(m, ChatMessage::User(_)))
            .unwrap_or(history.len())
            .max(system);
        let cost = |messages: &[ChatMessage]| -> usize {
            messages.iter().map(|m| counter.message(m)).sum()
        };
        let mut tokens = REPLY_PRIMING
            + counter.tools(tools)
            + cost(&history[..system])
            + cost(&history[current..]);
        // The earlier messages in units that go together, newest first.
        let earlier = &history[system..current];
        let mut units: Vec<std::ops::Range<usize>> = Vec::new();
        for (index, message) in earlier.iter().enumerate() {
            match (message, units.last_mut()) {
                // A result joins the call before it.
                (ChatMessage::Tool { .. }, Some(unit))
                    if unit.end == index && calls_tools(&earlier[unit.start]) =>
                {
                    unit.end = index + 1;
                }
                _ => units.push(index..index + 1),
            }
        }
        let budget = self.budget();
        let mut kept = earlier.len();
        for unit in units.iter().rev() {
            let unit_tokens = cost(&earlier[unit.clone()]);
            if tokens + unit_tokens > budget {
                break;
            }
            tokens += unit_tokens;
            kept = unit.start;
        }
        // The history sent starts at a user message.
        while kept < earlier.len() && !matches!(earlier[kept], ChatMessage::User(_)) {
            let unit = units.iter().find(|unit| unit.start == kept);
            let end = unit.map_or(kept + 1, |unit| unit.end);
            tokens -= cost(&earlier[kept..end]);
            kept = end;
        }
        let mut messages =
            Vec::with_capacity(system + earlier.len() - kept + history.len() - current);
        messages.extend_from_slice(&history[..system]);
        messages.extend_from_slice(&earlier[kept..]);
        messages.extend_from_slice(&history[current..]);
        Fitted {
            messages,
            dropped: kept,
            tokens,
        }
    }
}

fn calls_tools(message: &ChatMessage) -> bool {
    matches!(message, ChatMessage::Assistant { tool_calls, .. } if !tool_calls.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolCall;

    fn user(text: &str) -> ChatMessage {
        ChatMessage::User(text.to_owned())
    }

    fn reply(text: &str) -> ChatMessage {
        ChatMessage::Assistant {
            content: text.to_owned(),
            tool_calls: Vec::new(),
            reasoning: None,
        }
    }

    fn call(id: &str) -> ChatMessage {
        ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: id.to_owned(),
                name: "look".to_owned(),
                arguments: "{}".to_owned(),
                upstream_id: None,
            }],
            reasoning: None,
        }
    }

    fn result(id: &str) -> ChatMessage {
        ChatMessage::Tool {
            call_id: id.to_owned(),
            content: "{\"rows\":[]}".to_owned(),
        }
    }

    fn window(tokens: u32) -> Window {
        Window {
            tokens,
            reply_tokens: 0,
            counter: Counter::Estimate,
        }
    }

    /// A conversation of `turns` exchanges, each with a tool call, and a
    /// new question.
    fn long(turns: usize) -> Vec<ChatMessage> {
        let mut history = vec![ChatMessage::System("Be brief.".to_owned())];
        for turn in 0..turns {
            let id = format!("c{turn}");
            history.extend([
                user(&format!("question {turn}")),
                call(&id),
                result(&id),
                reply(&format!("answer {turn}")),
            ]);
        }
        history.push(user("the last question"));
        history
    }

    #[test]
    fn everything_goes_when_it_fits() {
        let history = long(3);
        let fitted = window(10_000).fit(&history, &[]);
        assert_eq!(fitted.messages, history);
        assert_eq!(fitted.dropped, 0);
        let counted: usize = history.iter().map(|m| Counter::Estimate.message(m)).sum();
        assert_eq!(fitted.tokens, counted + REPLY_PRIMING);
    }

    #[test]
    fn the_oldest_go_first_and_what_is_sent_is_well_formed() {
        let history = long(50);
        for budget in [40, 60, 90, 150, 400, 1000] {
            let fitted = window(budget).fit(&history, &[]);
            let sent = &fitted.messages;
            assert!(fitted.tokens <= budget as usize || fitted.dropped == history.len() - 2);
            assert_eq!(
                sent.len() + fitted.dropped,
                history.len(),
                "budget {budget}"
            );
            // The system prompt and the current question always go; the
            // rest is the newest part of the history, from a question on.
            assert_eq!(sent[0], history[0]);
            assert_eq!(sent.last(), history.last());
            assert_eq!(sent[1..], history[history.len() - sent.len() + 1..]);
            assert!(matches!(sent[1], ChatMessage::User(_)), "budget {budget}");
            // Every result follows its call.
            for (index, message) in sent.iter().enumerate() {
                if let ChatMessage::Tool { call_id, .. } = message {
                    assert!(index > 0);
                    match &sent[index - 1] {
                        ChatMessage::Assistant { tool_calls, .. } => {
                            assert_eq!(&tool_calls[0].id, call_id);
                        }
                        other => panic!("a result after {other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn the_current_turn_stays_even_when_it_alone_is_too_long() {
        let mut history = long(2);
        history.push(call("now"));
        history.push(result("now"));
        let fitted = window(10).fit(&history, &[]);
        // The system prompt, the question and this run's call and result.
        assert_eq!(fitted.messages.len(), 4);
        assert_eq!(fitted.dropped, history.len() - 4);
        assert!(fitted.tokens > 10);
    }

    #[test]
    fn openai_models_are_counted_with_their_tokenizer() {
        let Counter::Bpe(bpe) = Counter::for_model("gpt-4o-mini") else {
            panic!("gpt-4o-mini has a known tokenizer");
        };
        assert_eq!(bpe.count_ordinary("hello world"), 2);
        assert!(matches!(Counter::for_model("gpt-4-0613"), Counter::Bpe(_)));
        assert!(matches!(
            Counter::for_model("llama3.1:8b"),
            Counter::Estimate
        ));
        assert_eq!(Counter::Estimate.text("hello world"), 4);
    }
}
