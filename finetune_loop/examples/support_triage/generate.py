"""Generate the bundled support-triage example data (synthetic, CC0-1.0).

Writes, next to this file:

* ``tickets.jsonl``            labelled support tickets (10 labels) for curation / training / holdout
* ``production_traffic.jsonl`` 8 weeks of later, unlabelled production traffic with a built-in shift
* ``traffic_pool.jsonl``       fresh labelled tickets set aside for ``simulate-traffic`` (never curated,
  no text shared with tickets.jsonl), so simulated requests are not rows the model trained on

Everything is written by hand below (base messages per label, openers, closers, fictional
names / e-mails on example.com and example.org / 555-01xx phone numbers) and combined by one
seeded ``random.Random(20261121)`` (the traffic pool by its own ``random.Random(20261122)``, so
adding it changed neither of the other files), so the files are reproducible byte for byte.
Standard library only. Rerun from the repository root with::

    python finetune_loop/examples/support_triage/generate.py

and verify that the files on disk match a fresh in-memory run (and print the counts that
DATA_CARD.md quotes) with::

    python finetune_loop/examples/support_triage/generate.py --check
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from random import Random

SEED = 20261121
HERE = Path(__file__).resolve().parent
TICKETS_FILE = HERE / "tickets.jsonl"
TRAFFIC_FILE = HERE / "production_traffic.jsonl"
POOL_FILE = HERE / "traffic_pool.jsonl"
# Its own generator: drawing the pool from the main one would change every file drawn after it.
POOL_SEED = SEED + 1

# --------------------------------------------------------------------------------------------
# 1. Data: label counts, base messages per label
# --------------------------------------------------------------------------------------------

# Final rows per label in tickets.jsonl (duplicates included). Mildly imbalanced like real traffic.
TARGET_COUNTS = {
    "billing": 112,
    "refund": 98,
    "account_access": 105,
    "cancellation": 90,
    "shipping": 118,
    "damaged_item": 84,
    "technical_issue": 100,
    "product_question": 88,
    "feedback": 74,
    "account_update": 79,
}
# Rows per label in traffic_pool.jsonl: TARGET_COUNTS again (the same mild imbalance), enough that
# simulated weeks rarely draw one ticket twice.
POOL_COUNTS = {label: n for label, n in TARGET_COUNTS.items()}
EXACT_DUP_SHARE = 0.03
NEAR_DUP_SHARE = 0.03
SHORT_SHARE = 0.12  # share of tickets that use a very short message

# Slots in {braces} are filled per ticket (see SLOT_FILLERS). The same slot name repeated in
# one ticket gets the same value; {amount2}/{email2}/{phone2} are a second, different value.
BASE = {
    "billing": [
        "I was charged {amount} on {date} but I don't recognise this charge. Can you tell me what it is for?",
        "My card was charged twice for order {order}. I only placed one order.",
        "The invoice for {order} shows {amount} but the price on the website was lower when I checked out.",
        "Can you send me an invoice with my company name and VAT number on it? I need it for my expenses.",
        "I need to update the credit card on my account, the old one expired last month.",
        "Why is there a {amount} charge from you on my bank statement? I didn't order anything this month.",
        "My subscription renewed at {amount} instead of the {amount2} I signed up for. Why did the price go up without any notice?",
        "There's a pending charge of {amount} that has been sitting on my card for a week. When does it go through or drop off?",
        "I got billed for the {plan} but I'm on the basic one.",
        "Please resend the invoice from {date}, I can't find it in my inbox.",
        "How do I switch from paying by card to PayPal?",
        "Your system charged me sales tax even though I uploaded a tax exemption certificate.",
        "The discount code {code} was accepted at checkout but the final charge didn't include the discount.",
        "I was charged a late fee of {amount} but my payment went out on time, I have the bank confirmation.",
        "My payment keeps getting declined even though the card works everywhere else. Can you check what's wrong on your side?",
        "Can I get a receipt for order {order}? The one in my account shows the wrong billing address.",
        "I see three charges of {amount} from you dated {date}. I only bought one thing.",
        "The shipping fee on my invoice is {amount}, but checkout said free shipping over 50.",
        "Is it possible to split the payment for my annual plan into monthly installments?",
        "We were charged for 12 seats but our team only has 8 users. Please correct the invoice.",
        "My bank flagged a charge from you as suspicious, {amount} on {date}. I want to make sure it's legit before I approve it.",
        "I want to change the billing email so invoices go to {email} instead of my personal address.",
        "The currency on my invoice is wrong. I was billed in USD but I'm in Germany and expected EUR.",
        "I paid invoice {invoice} already but I keep getting payment reminder emails.",
        "Why was I charged during the free trial? It said no charge for 14 days.",
        "Could you explain the line 'service adjustment {amount}' on my latest invoice? No idea what that is.",
        "The price on the invoice doesn't match the quote your sales rep sent me.",
        "I updated my card details but the system is still trying to charge the old card ending in {last4}.",
        "Can you remove my saved card from the account? I'd rather enter it each time.",
        "My statement shows {amount} from you but the order total in my account is {amount2}. Where does the difference come from?",
        "I got charged for the upgrade even though I clicked downgrade.",
        "I need a copy of all invoices from this year for my accountant.",
        "There's a currency conversion fee on my card statement, is that from you or from my bank?",
        "Auto-pay took the money twice this month, please look into it.",
        "How come my gift card balance wasn't applied and my card got charged the full {amount}?",
        "I'd like to pay by bank transfer instead of card, can you send me your bank details?",
        "Invoice {invoice} is addressed to my old company, please reissue it with the new name.",
        "You charged my card before the order even shipped, is that normal?",
        "The student discount disappeared from my bill this month and I'm paying full price now.",
        "I got a 'payment failed' email but the money has left my account. Which one is it?",
        "I was overcharged by {amount} on my last order, can you adjust the invoice?",
        "The promo said 50% off the first three months but I was billed full price for the second month.",
        "Who do I talk to about a billing dispute? The amount on invoice {invoice} is wrong.",
        "Does your invoice include VAT or is it added on top? The number on my statement is higher than I expected.",
        "I have two accounts and both are being billed for the same subscription.",
        "The card ending in {last4} was charged {amount} for a plan I never chose.",
    ],
    "refund": [
        "I returned the {product} two weeks ago and still haven't received my refund.",
        "I'd like a refund for order {order}, it's not what I expected.",
        "Can I get my money back? I changed my mind about the {product}.",
        "What's the status of my refund? The return was delivered to your warehouse on {date}.",
        "You said the refund would take 5-7 business days, it's been {days} days now.",
        "I want a full refund, the {product} doesn't fit and I don't want an exchange.",
        "How do I return an item for a refund? I can't find the return form anywhere.",
        "The refund I got was {amount} but I paid {amount2}. Where's the rest?",
        "Please refund the shipping cost too, the item was sent back within the return window.",
        "I was promised a refund by your agent on the phone on {date}, nothing has arrived.",
        "Can the refund go to a different card? The original one has been closed.",
        "I'd prefer a refund instead of store credit, please.",
        "My order {order} was cancelled by you because it was out of stock. When will I get the money back?",
        "Is it too late to return the {product} for a refund? I bought it 35 days ago.",
        "I dropped off the return at the post office, tracking is {tracking}. When will the refund be processed?",
        "The refund shows as issued in my account but my bank says nothing came in.",
        "I want my money back for the workshop tickets, the event was postponed and I can't make the new date.",
        "Your return label is asking me to pay for postage, I thought returns were free? I just want a refund.",
        "Requesting a refund for the annual renewal you charged yesterday. I forgot to cancel and haven't used it at all.",
        "I received a partial refund but the whole order was returned.",
        "Do you refund in cash if I bought it in store?",
        "The item was faulty, I sent it back like your colleague told me to, and now I'm just waiting for the refund.",
        "It's been a month. Where is my refund? This is getting ridiculous.",
        "Can you confirm you received my return? I want to know the refund is on its way.",
        "The refund confirmation email says {amount} but the order was {amount2}.",
        "I returned two items from order {order} but only got refunded for one.",
        "I'm asking for a refund of the service fee because the technician never showed up.",
        "Please process my refund to PayPal, not as a gift card.",
        "Your return policy says 30 days and I'm on day 28, please let me return this for a refund.",
        "I'd like to return the {product}, still unopened, and get my money back.",
        "The delivery never came and the tracking says returned to sender. I just want a refund at this point.",
        "I got a message that my refund was rejected. Why? I followed every step.",
        "How long do refunds usually take to show up on a credit card?",
        "Can I return part of a bundle and get a refund for just that part?",
        "Refund for {order} please. Reason: bought the wrong size and the size I need is sold out.",
        "I cancelled the order within an hour but the money is still gone. When do I get it back?",
        "Your warehouse marked my return as 'not received' but I have the carrier receipt. I want my refund.",
        "I'm still waiting for the refund of {amount} that was approved on {date}.",
        "I don't want a replacement, I want a refund. The second one will probably have the same problem.",
        "Would I get a refund if I return the {product} opened? I only used it once.",
        "My refund went to an old card that's cancelled. What happens to the money now?",
        "The {product} went on sale 3 days after I bought it. Can I get the difference refunded?",
        "Refund request for order {order}. Item never used, box still sealed.",
        "I sent back the {product} on {date} and the refund still says 'pending'. How long does it stay like that?",
        "Please refund me for the second box, I ordered it by mistake and already sent it back.",
    ],
    "account_access": [
        "I can't log in to my account. It says my password is wrong but I'm sure it's right.",
        "The password reset email never arrives. I've checked spam and promotions.",
        "My account is locked after too many attempts, how do I unlock it?",
        "I lost my phone and now I can't get the 2FA code. How do I get into my account?",
        "I changed my email address and now I can't log in with either the old or the new one.",
        "The verification code you text me never comes through to {phone}.",
        "It keeps saying 'account not found' for {email} but I've had an account for years.",
        "I think someone hacked my account, the password was changed and I didn't do it.",
        "The reset link says it has expired even when I click it right away.",
        "I signed up with Google but now the Google login button gives an error and I never set a password.",
        "How do I get back into my account if I no longer have access to the email I registered with?",
        "The login page just loops back to itself after I enter my email and password.",
        "My authenticator app was reset and I don't have the backup codes.",
        "Can you unlock my account? My username is {username}.",
        "I need to change the email I use to sign in. The old one was from my former employer and I've lost access to it.",
        "I'm not receiving the magic login link, tried five times.",
        "Your site says my account has been suspended. Why? I can't log in.",
        "I forgot my password and my username. The email is probably {email}.",
        "It says 'account locked for security reasons'. What does that mean and how do I fix it?",
        "I set up 2FA on my old phone, got a new phone, and now I'm locked out.",
        "My partner and I share an account and now neither of us can log in after the password was changed.",
        "Every time I try to reset my password it says 'something went wrong'.",
        "Please help, I can't access my account and I have an order in progress.",
        "I got an email saying a new device signed in to my account. It wasn't me. Please lock it.",
        "The security questions I set up don't work anymore, I can't get past them.",
        "How do I turn off two-factor authentication? I can't receive SMS abroad and I'm stuck at the login screen.",
        "My login email has a typo from when I registered, {email}. I can't receive the codes. Can you fix it so I can log in?",
        "I tried logging in with Apple and it created a new empty account instead of opening my old one.",
        "I can't sign in on the app but the website works fine.",
        "It says 'too many requests, try again later'. It's been saying that for two days.",
        "I'm trying to log in to our business account but I only have my personal login.",
        "The reset email arrives but the new password is never accepted.",
        "My account was closed by mistake I think, I can't get in anymore.",
        "The captcha won't let me log in no matter how many times I solve it.",
        "I need to regain access to my account, the phone number for verification is an old one I don't have anymore.",
        "I have my password but it asks for a code sent to an email address I don't recognise.",
        "My daughter changed the password on my account and forgot it. How do we reset it?",
        "Locked out. Please reset my 2FA so I can log in again.",
        "I'm asked to verify my identity but the ID upload doesn't work, so I still can't get into the account.",
        "Is there a way to log in without the SMS code? I'm travelling and don't have signal.",
        "I got an email that my password was reset. I didn't request it and now I can't log in.",
        "I can log in on my laptop but on my phone it says invalid credentials.",
        "The login code arrives but it's always 'invalid or expired'.",
        "After I changed my password yesterday I can't log in anywhere, not even with the new one.",
        "My account shows 'pending verification' and won't let me in, the verification email never came to {email}.",
    ],
    "cancellation": [
        "Please cancel my subscription effective immediately.",
        "I'd like to cancel order {order} before it ships.",
        "How do I turn off auto-renew? I don't want to be charged again next year.",
        "I want to cancel my {plan}. I'm not using it enough to justify the cost.",
        "Cancel my membership please, and confirm by email.",
        "I tried to cancel online but the button doesn't do anything. Please cancel it for me.",
        "Can I cancel the order I placed an hour ago? I picked the wrong colour.",
        "I'm moving abroad and need to end my contract. What's the notice period?",
        "Stop the monthly box, we don't need it anymore.",
        "I want to drop the paid plan and go back to the free version.",
        "Please do not renew my plan on {date}.",
        "I cancelled last month but it's still active and I got a renewal email. Make sure it's cancelled this time.",
        "How do I cancel the free trial before it converts to paid?",
        "Close my account entirely, I won't be using your service again.",
        "I need to cancel one of the items in order {order}, the rest can ship.",
        "Please cancel the recurring order for coffee pods, I've switched brands.",
        "Is there a cancellation fee if I end the annual plan early?",
        "My husband passed away and I need to cancel his subscription.",
        "Can I pause my subscription instead of cancelling? If not, please cancel it.",
        "We want to terminate the service for our company, 15 seats, at the end of the billing period.",
        "Cancel the pre-order for the {product} please, I found it elsewhere.",
        "Where is the cancel button? I've looked everywhere in settings.",
        "Please confirm that my subscription has been cancelled, I didn't get any confirmation.",
        "I'd like to cancel the extended warranty I added to my order.",
        "Your cancellation process is way too complicated. Just cancel it please.",
        "Don't send the next shipment, I'm cancelling.",
        "I signed up by accident, please cancel and don't charge me.",
        "I want to cancel the installation appointment on {date}.",
        "Please end my subscription at the end of this month. I don't need a refund, just stop future charges.",
        "Could you cancel the order I placed for my mother? She already bought one herself.",
        "Turn off auto renewal for all subscriptions on {email}.",
        "I want out of the family plan, please cancel it for all members.",
        "Cancel order {order}. Not needed anymore.",
        "How many days before renewal do I need to cancel to avoid being charged?",
        "I'm cancelling because the price went up again. Please process it.",
        "We're closing the business, so please cancel all our services with you.",
        "Unsubscribe me from the premium plan and make sure I'm not billed in {month}.",
        "I'd like to cancel the streaming add-on but keep the main membership.",
        "Just want to stop my plan from renewing. Nothing else.",
        "I ordered twice by mistake, please cancel the second order, {order}.",
        "I was told I could cancel anytime. Please cancel now.",
        "Can you cancel my order if it hasn't been dispatched yet? If it has, I'll refuse the delivery.",
        "Please cancel the subscription for the {product} refills.",
        "End my trial now please, I've seen enough.",
        "I need to cancel my account before the next billing cycle on {date}, how do I do it?",
    ],
    "shipping": [
        "Where is my order? I placed it on {date} and haven't heard anything since.",
        "My tracking number {tracking} hasn't updated in {days} days.",
        "The delivery was supposed to arrive yesterday but it's not here.",
        "Tracking says delivered but there's no package at my door.",
        "The package went to my old address even though I updated it before ordering.",
        "Can you tell me when order {order} will ship?",
        "{carrier} says the parcel is held at the depot. What do I need to do?",
        "My order has said 'label created' for a week now. Has it actually been sent?",
        "The estimated delivery date keeps moving back. First it was {date}, now it's next week.",
        "The courier left my package with a neighbour I don't know. Which house was it?",
        "I paid for express shipping and it's been 6 days.",
        "Can I change the delivery address for order {order}? It hasn't shipped yet.",
        "Order {order} was split into two shipments and only one has arrived.",
        "The tracking link in the email doesn't work, it just says invalid number.",
        "My parcel is stuck in customs. Do I have to pay something?",
        "The driver marked it as 'recipient not available' but I was home all day.",
        "I need this by Friday for a birthday. Is there any way to speed up the shipping?",
        "It's been three weeks. Where is my stuff??",
        "The package was delivered to the wrong address, the photo shows a house that isn't mine.",
        "Tracking shows my parcel going back and forth between two cities.",
        "Can you give me the tracking number for {order}? I never got a shipping confirmation.",
        "The carrier says the address is incomplete. It's the same address I always use.",
        "My order shows as shipped but {carrier} has no record of it.",
        "Can I pick up my order at the depot instead of waiting for redelivery?",
        "According to tracking, delivery was attempted at 3am?? Nobody came.",
        "Is there a delay with {carrier}? None of my orders are moving.",
        "When will the back-ordered {product} ship? The rest of my order came last week.",
        "Please redirect my parcel to the pickup point near my office.",
        "I've been waiting for order {order} since {date}. Can you check with the warehouse?",
        "The tracking page says 'exception'. What does that mean?",
        "My package was returned to you as undeliverable. Can you send it again?",
        "Will my order arrive before the weekend? It's showing a much later date.",
        "The shipping confirmation has someone else's address on it.",
        "The parcel has been 'out for delivery' for three days straight.",
        "Do you deliver on Saturdays? I'm never home during the week and the courier keeps missing me.",
        "My order was supposed to ship within 24 hours, it's day 5 and it still says 'processing'.",
        "Your courier threw the box over my fence. Nothing broke this time but please tell them to stop.",
        "I moved last week. Can the order going to my old address be intercepted?",
        "Delivery late again. This is the third order in a row.",
        "Is it possible to get a delivery time window? I work shifts.",
        "The carrier website says my package is lost. What now?",
        "Tracking {tracking} says delivered to a parcel locker but I never got a pickup code.",
        "Any update on shipping for order {order}? It's been a while.",
        "The delivery note says it was signed for by 'J' but nobody here signed anything.",
        "My parcel with {carrier} has been 'in transit' since {date} and the hotline just hangs up.",
    ],
    "damaged_item": [
        "The {product} arrived with a cracked screen.",
        "My order {order} came today, the box was crushed and the {product} inside is broken.",
        "The item I received is not what I ordered. I ordered the blue one and got a red one.",
        "Missing parts: the {product} came without the screws and the manual.",
        "The {product} stopped working after two days, it won't turn on at all.",
        "There's a big scratch across the top of the {product}, it looks used.",
        "I received the wrong size, I ordered {size} and got a different one.",
        "The glass was shattered when I opened the package. Can you send a replacement?",
        "The zipper on the {product} broke the first time I used it.",
        "One of the two items in my order was missing from the box.",
        "The seal on the {product} was broken and it leaked all over the box.",
        "I received a completely different product, it isn't even from my order.",
        "The charger that came with the {product} doesn't work.",
        "The item arrived dented. I'd like a replacement, not a refund.",
        "The colour is totally different from the photo and the stitching is coming apart.",
        "The food items in my order were already past their expiry date on arrival.",
        "Half the pieces of the puzzle set are missing.",
        "The {product} makes a loud rattling noise, something is loose inside.",
        "The box was soaked and everything inside is water damaged.",
        "I got the left shoe twice and no right shoe.",
        "The {product} is defective, the buttons don't respond. What are my options?",
        "Arrived broken. Photos attached. Order {order}.",
        "The mug I got is chipped on the rim.",
        "The battery of my {product} is swelling, I'm worried it's dangerous.",
        "I was sent a refurbished unit instead of a new one, the packaging had already been opened.",
        "The parcel looked fine but the {product} inside has a bent frame.",
        "The remote was missing from the box of the TV I ordered.",
        "One leg of the table is shorter than the others, a manufacturing defect I guess.",
        "The lid of the {product} doesn't close properly, it's warped.",
        "Wrong item received. I ordered the 64GB model and got the 32GB one.",
        "I need a replacement part for the {product}, the hinge snapped on arrival.",
        "The fabric has a hole in it, it came like this.",
        "The print on the shirt peeled off after one wash.",
        "Everything in the box was smashed. Did nobody pack this properly?",
        "The set should have 4 chairs but the box only had 2.",
        "The {product} arrived with a power cable for the wrong country.",
        "The screen has dead pixels right in the middle.",
        "My {product} arrived with a crack in the base. I'd like a replacement or my money back, whichever is faster.",
        "The item smells burnt when I turn it on, I'm not using it again.",
        "I received someone else's order. The name on the packing slip isn't mine.",
        "The box arrived open and the accessories are gone.",
        "The {product} I got is not the model shown on the product page, it's an older version.",
        "Both bottles were broken, there's glass all over the box.",
        "The strap on the {product} snapped within a week. Is that covered?",
        "The {product} from order {order} has a faulty switch, it only works if I hold it down.",
    ],
    "technical_issue": [
        "The app crashes every time I open it on my {device}.",
        "I get the error '{error}' when I try to check out.",
        "My data isn't syncing between my phone and my laptop.",
        "Your website is down, I can't load any page.",
        "The search function returns no results for anything I type.",
        "Notifications stopped working after the last update.",
        "When I upload a photo it just spins forever.",
        "The app freezes on the loading screen since version {version}.",
        "I can't add items to my cart, the button is greyed out.",
        "Export to CSV produces an empty file.",
        "The page keeps reloading when I try to save my settings.",
        "Dark mode makes the text invisible on the order page.",
        "My {product} won't connect to the app over Bluetooth anymore.",
        "The video player shows a black screen with sound only.",
        "I'm getting a 500 error on the dashboard since this morning.",
        "The checkout page is blank on Safari, it works on Chrome.",
        "Changes I make on the website don't show up in the app until I reinstall it.",
        "The app drains my battery, it's using 40% in the background.",
        "The payment page times out every single time.",
        "The calendar integration duplicates every event.",
        "Push notifications arrive hours late.",
        "I can't attach files to my messages, it says upload failed.",
        "The app says I'm offline even though my wifi works fine.",
        "After updating to {version} all my saved lists are gone.",
        "The barcode scanner in the app doesn't open the camera.",
        "The firmware update failed halfway and now the {product} won't boot.",
        "Your API returns 429 errors even though we're well below the rate limit.",
        "Images on the product pages are not loading.",
        "The app won't install, it says it's not compatible with my {device}.",
        "The filter on the order history doesn't work, it shows all orders regardless.",
        "When I switch the language to Spanish half of the app stays in English.",
        "Sync is stuck at 99% and never completes.",
        "I keep getting 'session expired' in the middle of filling out forms.",
        "The desktop app crashes on startup on Windows 11 with error {error}.",
        "Two-way sync deleted my notes on the laptop.",
        "Your site is super slow, every page takes 30 seconds to load.",
        "The map in the store locator doesn't show anything, just a grey box.",
        "The widget on my home screen hasn't refreshed in days.",
        "Voice commands to the {product} just get 'something went wrong'.",
        "The receipt PDF download gives me a corrupted file.",
        "The app keeps asking for permissions I already granted.",
        "Reports are showing yesterday's data, nothing from today.",
        "The checkout button does nothing when I click it. No error, just nothing.",
        "Since last night the app shows an infinite spinner on the home screen.",
        "The {product} keeps disconnecting from wifi every few minutes and the app shows it as offline.",
    ],
    "product_question": [
        "Does the {product} work with an iPhone?",
        "What size should I get? I'm usually a medium but between sizes.",
        "Is the {product} waterproof or just water resistant?",
        "Can I use the {product} in Europe with 230V sockets?",
        "How long does the battery last on the {product}?",
        "Can the {plan} handle 20 users or do I need the business tier?",
        "Does the {product} come with a warranty? How long is it?",
        "What's the difference between the standard and pro versions?",
        "Is this dishwasher safe?",
        "Will the {product} fit in a carry-on bag?",
        "Do you have this in other colours? The website only shows black.",
        "How do I set up the {product} for the first time? The manual is confusing.",
        "Can I export my data to Excel on the basic plan?",
        "Is the material vegan, no leather or wool?",
        "What are the dimensions of the {product} when folded?",
        "Does the subscription include an offline mode?",
        "Can the {product} be used by two people at the same time?",
        "Are replacement filters available separately?",
        "Is there a student discount?",
        "When will the {product} be back in stock?",
        "Is it compatible with Android 12?",
        "How many watts does it use?",
        "Do the shoes run small? I'm a 42 in most brands.",
        "Can I connect the {product} to Alexa or Google Home?",
        "Is the app available in German?",
        "What's included in the box?",
        "Is the {product} suitable for kids under 5?",
        "Can I get a name engraved on it? It's a gift.",
        "How do I clean the {product}? Can it go in the washing machine?",
        "Does your software support single sign-on?",
        "Is there a way to share my lists with family members?",
        "What's the maximum weight the {product} can hold?",
        "Do you ship internationally, and to which countries?",
        "Can I use the {product} without creating an account?",
        "Can I try the premium features before buying?",
        "Does the {product} need a hub or does it connect to wifi directly?",
        "How is the {product} different from the older model?",
        "Is the fabric breathable enough for summer?",
        "Which charger do I need for the {product}? USB-C?",
        "Does it work on a Mac?",
        "I'm planning to buy the {product} as a gift. Can you gift wrap it?",
        "Do you offer bulk pricing for 50+ units?",
        "Is the {product} made in the EU?",
        "What's the return policy if the size doesn't fit? Thinking about ordering two sizes.",
        "Can the {product} run on batteries or does it have to be plugged in?",
    ],
    "feedback": [
        "Just wanted to say your support team was fantastic, especially {agent}.",
        "Your service has really gone downhill in the last year.",
        "It would be great if the app had a dark mode.",
        "The new website design is confusing. I liked the old one better.",
        "Love the {product}! Best purchase I've made this year.",
        "Honestly, the hold times on your phone line are unacceptable.",
        "Suggestion: let us choose a delivery day at checkout.",
        "Thanks for the quick delivery, everything was perfect.",
        "I've been a customer for 8 years and I've never been this disappointed.",
        "The packaging uses way too much plastic. Please consider something greener.",
        "Your chatbot is useless, it never understands what I ask.",
        "Kudos to the driver who delivered in the storm today.",
        "It would be nice if you had a loyalty program.",
        "The quality of your products used to be much better.",
        "Just a note: the font on the receipts is tiny and hard to read for older people.",
        "Great job on the new app update, it's so much faster now.",
        "Nothing to fix, I just think your marketing emails are a bit much.",
        "Your prices keep going up while the service gets worse.",
        "It would be nice to have more size options for tall people.",
        "The agent I spoke to yesterday was rude and hung up on me.",
        "Really impressed with how easy the return process was.",
        "Feature idea: a shared shopping list for households.",
        "No request, just frustrated. Every interaction with your company is a hassle.",
        "Five stars for customer service, you solved my issue in minutes.",
        "I think the checkout process has too many steps.",
        "The staff at your downtown store were super helpful.",
        "The survey you sent is way too long, nobody will fill that out.",
        "Please bring back the old recipe, the new one isn't as good.",
        "Feedback on my last order: great product, slow shipping, ok packaging.",
        "I appreciate that you donate part of your sales to charity, keep it up.",
        "Why do you make it so hard to find a phone number to call?",
        "The tutorial videos are really well done, thanks.",
        "You should offer a monthly option, not just yearly.",
        "Your competitors have free returns, just saying.",
        "The new logo looks cheap, sorry.",
        "Thanks to the team for fixing that bug so quickly last week.",
        "I'm giving you one star until you improve your response times.",
        "The instructions were clear and assembly took 10 minutes, well done.",
        "It's disappointing that there's no option to talk to a real person.",
        "Keep up the good work! The recipes in your newsletter are my favourite part.",
        "I'd love to see a smaller version of the {product}.",
        "Overall happy, but the website gets slow in the evenings.",
        "Your ads are everywhere, it's getting annoying.",
        "Just a compliment for {agent} in chat support, very patient with me.",
        "Not a complaint really, but your delivery boxes are always way too big for what's inside.",
    ],
    "account_update": [
        "Please update my shipping address to 12 Elm Street, Springfield.",
        "I got married and need to change my last name on the account.",
        "Can you change my phone number to {phone}?",
        "Please remove me from the newsletter, I get too many emails.",
        "How do I change the email address on my profile to {email}?",
        "Please update my date of birth, it's wrong in the system.",
        "I want to stop receiving promotional texts.",
        "Please change the contact person on our business account to {first2} {last2}.",
        "I moved. New address is Flat 4, 22 Harbour Road. Please update my default address.",
        "Can you correct the spelling of my name? It's Catherine with a C.",
        "Unsubscribe me from marketing emails but keep the order updates.",
        "How can I add a second delivery address to my profile?",
        "Please update the company name on our account to {company}.",
        "Change my preferred language to French, please.",
        "I want to switch from email notifications to SMS.",
        "Please remove my old phone number {phone} from my profile.",
        "Can I change my username?",
        "Please add my partner as an authorised user on the account.",
        "I'd like to opt out of all marketing communications.",
        "Change my title from Mr to Dr please.",
        "Our office moved, please update the billing and shipping address to the new location.",
        "Stop sending me the weekly digest.",
        "Please set my email preferences so I only get receipts.",
        "Can you set my default currency to GBP?",
        "I need to update the tax ID on my profile.",
        "How do I change the display name that shows on my reviews?",
        "Please delete my Boston address from the saved addresses.",
        "I want to update my birthday so I get the birthday discount on the right day.",
        "Please change the delivery instructions on my account to 'leave at back door'.",
        "Update my phone number please, the old one was {phone} and the new one is {phone2}.",
        "My pronouns are listed wrong on my profile, please change them to they/them.",
        "Please remove the newsletter subscription for {email}.",
        "I want the account to be in my wife's name now, she's taking over the subscription.",
        "Change of address: as of {date} I'm living at 5 Birch Lane, Apt 3.",
        "Please turn off the SMS reminders.",
        "Where do I update my time zone? All my notifications come at 3am.",
        "I need to update the emergency contact on file.",
        "Could you merge my two profiles? Same person, different emails.",
        "Please change the email on my account from {email} to {email2}. I can still log in, I just want receipts to go to the new one.",
        "Remove my middle name from the account please.",
        "Stop the paper catalogue to my house, I only want digital.",
        "Update my size preferences in the profile to L please.",
        "How do I edit my profile details? I can't find an edit button.",
        "Please mark my account as a business account and add VAT number {vat}.",
        "Take me off the mailing list and the SMS list, but keep my account.",
    ],
}

# Very short messages, mostly phone-typed.
SHORT = {
    "billing": ["double charged", "wrong amount on invoice", "charged twice??", "need invoice for {order}",
                "what is this charge {amount}", "update payment method", "billing question", "why was i charged"],
    "refund": ["refund pls", "where is my refund", "i want my money back", "refund status?", "still no refund",
               "refund for {order}", "money back please"],
    "account_access": ["cant login", "password reset not working", "locked out of my account", "2fa code not arriving",
                       "forgot password", "cant sign in", "account locked"],
    "cancellation": ["cancel my subscription", "cancel order {order}", "stop auto renew", "please cancel",
                     "how do i cancel", "cancel my plan pls", "i want to cancel"],
    "shipping": ["where is my order", "wheres my package", "tracking not updating", "order {order} not arrived",
                 "delivery late", "package not delivered", "wrong address delivery"],
    "damaged_item": ["item arrived broken", "wrong item received", "missing parts", "its broken",
                     "damaged on arrival", "got the wrong product"],
    "technical_issue": ["app keeps crashing", "website down?", "error {error}", "sync not working",
                        "app wont open", "page not loading", "bug in the app"],
    "product_question": ["does it come in blue", "is this waterproof", "what size should i order",
                         "compatible with android?", "how big is it"],
    "feedback": ["great service thanks", "love it", "terrible service", "you guys rock", "very disappointed",
                 "suggestion: add dark mode"],
    "account_update": ["change my address", "update phone number", "unsubscribe newsletter",
                       "remove me from mailing list", "change email on account", "update my profile"],
}

# Asides from another queue, appended after the main message (mixed intent, one intent dominates).
SECONDARY = {
    "billing": ["Also, can you send me the invoice for it?", "And why was there a {amount} shipping fee?"],
    "refund": ["If that's not possible I'd like my money back.", "Otherwise just refund me."],
    "account_access": ["Also I couldn't log in on the app earlier, not sure if it's related.",
                       "Btw the password reset mail took ages to arrive."],
    "cancellation": ["If this isn't fixed I'm going to cancel.", "Honestly thinking about cancelling."],
    "shipping": ["Also my last order still hasn't arrived.", "And the tracking link doesn't work either."],
    "damaged_item": ["The last thing I got from you had a scratch too but whatever."],
    "technical_issue": ["Your website also crashed twice while I was writing this.",
                        "Also the app keeps logging me out."],
    "product_question": ["Also, does the {product} come in black?", "Quick question too: is there a warranty?"],
    "feedback": ["Your support used to be better btw.", "Love your products otherwise."],
    "account_update": ["And please update my phone number to {phone} while you're at it.",
                       "Also please take me off the newsletter."],
}

# Extra story sentences for longer tickets (they add length and context, not a new request).
DETAIL = {
    "billing": [
        "I noticed it this morning when I checked my banking app.",
        "My partner uses the same card, so I checked with them first and it wasn't them.",
        "I've attached a screenshot of the statement with the line highlighted.",
        "This is a business account so I need the invoices to be correct for our bookkeeping.",
        "The last three months were fine, it only started with this bill.",
        "Our finance team closes the month on Friday, so it's a bit urgent.",
        "I'd like the difference credited back to the same card.",
    ],
    "refund": [
        "I packed it in the original box and kept the receipt from the drop-off point.",
        "The return was accepted according to the tracking, I can see it was signed for.",
        "I've already waited the 10 business days your website mentions.",
        "I don't want store credit, I'd like it back on my original payment method.",
        "Money is tight this month so I really need this sorted.",
        "Your bot keeps telling me the refund is 'in progress', which doesn't help.",
    ],
    "account_access": [
        "I've tried on the app and in two different browsers, same result.",
        "I cleared my cookies and cache like the help page says, no luck.",
        "I still get your marketing emails at the same address, so the address works.",
        "I have an order arriving this week and I need to check the delivery details.",
        "I'm worried because my card is saved on that account.",
        "I tried the 'forgot password' option four times today.",
    ],
    "cancellation": [
        "I've found a cheaper alternative that suits me better.",
        "Nothing against you, I just don't use it anymore.",
        "Please make sure no further payments are taken after today.",
        "I'd like written confirmation of the cancellation for my records.",
        "I tried the chat first but it only offered me a discount to stay.",
        "We're cutting costs at home and this is one of the things that has to go.",
    ],
    "shipping": [
        "I've checked with my neighbours and the building reception, nothing.",
        "It's a birthday present so the date really matters.",
        "The carrier's hotline told me to contact you because you're the sender.",
        "Other orders I placed after this one have already arrived.",
        "I work from home so someone is always here to accept the parcel.",
        "The last update on the tracking page was at the sorting centre.",
    ],
    "damaged_item": [
        "I have photos of the box and the item and can send them if needed.",
        "The outer box looked fine so it must have happened before packing.",
        "I haven't used it, it's still in the packaging apart from what I opened to check.",
        "It was meant as a gift so I can't give it like this.",
        "I'd prefer a replacement if you have one in stock.",
        "I've kept all the packaging in case you need it back.",
    ],
    "technical_issue": [
        "I've already reinstalled the app and restarted my phone.",
        "I'm on the latest version as far as I can tell.",
        "It happens on wifi and on mobile data.",
        "My colleague has the same problem on her laptop.",
        "It worked fine until about a week ago.",
        "I've tried Chrome and Firefox, both do the same thing.",
    ],
    "product_question": [
        "I'm comparing it with a couple of other brands before I decide.",
        "I'd like to order this week if the answer is yes.",
        "The product page doesn't say anything about it.",
        "It would be a gift for my dad, who isn't very techy.",
        "I read mixed things in the reviews.",
        "I need to know before the sale ends on Sunday.",
    ],
    "feedback": [
        "I don't need a reply, I just wanted you to know.",
        "I've recommended you to a few friends already.",
        "I hope this gets passed on to whoever is responsible.",
        "I've been shopping with you since the early days.",
        "It's a small thing but it makes a difference.",
        "Maybe others feel the same, I don't know.",
    ],
    "account_update": [
        "Everything else on the account can stay the same.",
        "I don't want to create a new account, I have my order history here.",
        "I couldn't find where to change this in the settings.",
        "Please let me know once it's done.",
        "It needs to be correct before my next order ships.",
        "The old details are no longer valid as of this week.",
    ],
}

# --------------------------------------------------------------------------------------------
# 2. Data: label-neutral wrapping (openers, context, tone, closers, signatures)
# --------------------------------------------------------------------------------------------

OPENERS = [
    "Hi,", "Hello,", "Hi there,", "Hey,", "hey", "hi", "Good morning,", "Good afternoon,", "Good evening,",
    "Dear Support,", "Dear Sir/Madam,", "To whom it may concern,", "Hello team,", "hi team", "Hi support,",
    "Hiya,", "Greetings,", "Hello, I hope you're well.", "Hi, it's {first} again.", "Hello, this is {first} {last}.",
    "Quick question -", "Urgent:", "HELP", "Hi guys,", "Morning,", "Hello there.", "RE: {order}",
    "Hi, {first} here.", "Hey there!", "Dear team,",
]

CONTEXT = [
    "I've been a customer for {years} years.",
    "This is the second time I'm writing about this.",
    "I already tried the live chat but nobody answered.",
    "My account email is {email}.",
    "You can reach me at {phone}.",
    "My order number is {order} in case you need it.",
    "Sorry if this is the wrong place to ask.",
    "I'd appreciate a quick reply.",
    "I need this sorted before the weekend.",
    "Please call me back on {phone} if that's easier.",
    "I attached a screenshot.",
    "Sorry for my English.",
    "I'm on holiday next week so email is best.",
    "I ordered this for my son's birthday.",
    "Long story short, I've been going back and forth on this for a week.",
    "The account is under {email}.",
    "I called yesterday and was on hold for 40 minutes.",
    "My name on the account is {first} {last}.",
    "It's for our office in {city}.",
    "Not the first time this happens.",
]
# Context that does not imply an open problem; the only kind added to praise, ideas and questions.
CALM_CONTEXT = ["I've been a customer for {years} years.", "My account email is {email}.", "Sorry for my English.",
                "My name on the account is {first} {last}.", "It's for our office in {city}.",
                "Sorry if this is the wrong place to ask.", "I ordered this for my son's birthday."]
CALM_LABELS = ("feedback", "product_question")

TONE_ANGRY = ["This is unacceptable.", "Really annoyed right now.", "Sort it out.", "I'm fed up with this.",
              "Not happy.", "Fix this ASAP!!", "Ridiculous.", "Seriously??", "I expect an answer TODAY."]
TONE_POLITE = ["Sorry to bother you.", "Many thanks for your help.", "I hope this makes sense.",
               "Thank you for your patience.", "Any help is appreciated!", "Thanks so much in advance."]

CLOSERS = [
    "Thanks", "Thanks!", "Thank you.", "thx", "ty", "Thanks in advance.", "Regards, {first}",
    "Best, {first} {last}", "Kind regards,\n{first} {last}", "Please advise.", "Appreciate it.",
    "Waiting for your answer.", "Cheers", "-- {first}", "Thank you very much!", "Best regards",
    "Thanks, {first}", "cheers {first}", "Many thanks.",
]
SIGNATURES = ["\n\nSent from my iPhone", "\n\nSent from my Android phone", "\n\nGet Outlook for iOS"]

# --------------------------------------------------------------------------------------------
# 3. Data: slot values (all fictional; e-mails on example.com / example.org, phones 555-01xx)
# --------------------------------------------------------------------------------------------

FIRST = ["Jane", "John", "Maria", "Ahmed", "Priya", "Chen", "Lucas", "Sofia", "Tom", "Aisha", "Mateo", "Olga",
         "Kenji", "Fatima", "Liam", "Emma", "Noah", "Zoe", "Ravi", "Hannah", "Diego", "Ingrid", "Kwame", "Yuki",
         "Leila", "Peter", "Anna", "Omar", "Grace", "Marco"]
LAST = ["Doe", "Smith", "Garcia", "Khan", "Patel", "Wang", "Rossi", "Nguyen", "Kowalski", "Okafor", "Tanaka",
        "Silva", "Johnson", "Brown", "Novak", "Haddad", "Larsen", "Mensah", "Fischer", "Lopez"]
AGENTS = ["Maria", "Sam", "Tobias", "Nadia", "Kevin", "Ines"]
PRODUCTS = ["Nimbus Earbuds", "Orbit Speaker", "Lumen Desk Lamp", "TrailLite Backpack", "Cascade Water Filter",
            "Stride Runner shoes", "Harbor Rain Jacket", "Kinetic Fitness Band", "Ember Coffee Grinder",
            "Atlas Travel Mug", "Verde Yoga Mat", "Drift Weighted Blanket", "Pulse Smartwatch", "Aero Hair Dryer",
            "Vista 4K Monitor", "Breeze Desk Fan", "Cobalt Blender", "Pebble Kids Tablet", "Summit Tent",
            "Glow Night Light"]
DEVICES = ["iPhone 12", "iPhone 15", "Pixel 7", "Galaxy S21", "Galaxy A52", "iPad", "Android tablet",
           "Windows 11 laptop", "MacBook", "Chromebook"]
ERRORS = ["ERR_CONNECTION_RESET", "Error 500", "code E-1043", "503 Service Unavailable",
          "Something went wrong (code 17)", "NETWORK_ERROR", "0x80070005", "SYNC_FAILED_409", "E_TIMEOUT"]
CARRIERS = ["SwiftPost", "ParcelGo", "RapidShip", "the courier", "the delivery company"]
PLANS = ["Plus plan", "Premium plan", "Family plan", "Pro plan", "annual plan", "monthly plan", "Business plan"]
CODES = ["SPRING20", "WELCOME10", "SAVE15", "FREESHIP", "VIP25"]
COMPANIES = ["Bluefin Studio GmbH", "Oakridge Dental LLC", "Northfield Bakery Ltd", "Kestrel Design Co."]
CITIES = ["Leeds", "Austin", "Lyon", "Toronto", "Denver", "Dublin", "Rotterdam", "Melbourne"]
SIZES = ["M", "L", "size 42", "XL", "size 9", "S"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def fill_amount(rng: Random) -> str:
    value = rng.choice([4.99, 9.99, 12.5, 19.9, 24.0, 29.99, 39.0, 49.99, 64.5, 79.0, 99.99, 129.0, 249.0, 499.0])
    value = round(value * rng.choice([1, 1, 1, 2, 0.5]), 2)
    fmt = rng.choice(["${v:.2f}", "${v:.2f}", "€{v:.2f}", "{v:.2f} EUR", "£{v:.2f}", "{v:.2f} USD", "${i}",
                      "CAD {v:.2f}", "{c}€", "{i} dollars"])
    return fmt.format(v=value, i=int(value), c=f"{value:.2f}".replace(".", ","))


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def fill_date(rng: Random, before: date) -> str:
    """A date 1-40 days before the message was written, in one of the ways people write dates."""
    d = before - timedelta(days=rng.randint(1, 40))
    name = MONTHS[d.month - 1]
    fmt = rng.choice(["{name} {day}", "{name} {ord}", "{num}/{day}", "{day}.{num}.", "{iso}", "{short} {day}",
                      "last Tuesday", "yesterday", "on Monday", "the {ord}", "two weeks ago", "{day} {name}"])
    return fmt.format(name=name, short=name[:3], day=d.day, ord=ordinal(d.day), num=d.month, iso=d.isoformat())


def fill_phone(rng: Random) -> str:
    n = rng.randint(0, 99)
    return rng.choice([f"+1 555-01{n:02d}", f"555-01{n:02d}", f"(212) 555-01{n:02d}", f"+1 (555) 01{n:02d}",
                       f"+44 20 7946 0{rng.randint(0, 999):03d}"])


def fill_email(rng: Random, first: str, last: str) -> str:
    domain = rng.choice(["example.com", "example.com", "example.org"])
    local = rng.choice([f"{first}.{last}", f"{first[0]}{last}{rng.randint(1, 99)}", f"{first}{rng.randint(70, 99)}",
                        f"{first}_{last}", f"{last}.{first[0]}"])
    return f"{local.lower()}@{domain}"


def make_slots(rng: Random, written: date) -> dict:
    """Lazy per-ticket slot values, so a slot used twice in one ticket stays consistent."""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    first2, last2 = rng.choice(FIRST), rng.choice(LAST)
    fillers = {
        "first": lambda: first, "last": lambda: last, "first2": lambda: first2, "last2": lambda: last2,
        "email": lambda: fill_email(rng, first, last), "email2": lambda: fill_email(rng, first, rng.choice(LAST)),
        "phone": lambda: fill_phone(rng), "phone2": lambda: fill_phone(rng),
        "order": lambda: f"#A{rng.randint(10000, 99999)}" if rng.random() < 0.8 else f"A{rng.randint(10000, 99999)}",
        "invoice": lambda: f"INV-2026-{rng.randint(1000, 9999)}",
        "amount": lambda: fill_amount(rng), "amount2": lambda: fill_amount(rng),
        "date": lambda: fill_date(rng, written), "month": lambda: MONTHS[written.month % 12],
        "product": lambda: rng.choice(PRODUCTS), "device": lambda: rng.choice(DEVICES),
        "error": lambda: rng.choice(ERRORS), "carrier": lambda: rng.choice(CARRIERS),
        "tracking": lambda: rng.choice(["SP", "PG", "RS"]) + str(rng.randint(100000000, 999999999)),
        "plan": lambda: rng.choice(PLANS), "code": lambda: rng.choice(CODES),
        "company": lambda: rng.choice(COMPANIES), "city": lambda: rng.choice(CITIES),
        "size": lambda: rng.choice(SIZES), "days": lambda: str(rng.randint(4, 21)),
        "years": lambda: str(rng.randint(2, 12)), "last4": lambda: f"{rng.randint(0, 9999):04d}",
        "username": lambda: f"{first.lower()}{rng.randint(1, 99)}",
        "version": lambda: f"4.{rng.randint(1, 9)}.{rng.randint(0, 3)}", "agent": lambda: rng.choice(AGENTS),
        "vat": lambda: f"DE{rng.randint(100000000, 999999999)}",
    }
    return fillers


# --------------------------------------------------------------------------------------------
# 4. Noise: phone-keyboard abbreviations, misspellings, typos, case, punctuation
# --------------------------------------------------------------------------------------------

SLOT_RE = re.compile(r"(\{[a-z0-9_]+\})")

ABBREV = {"please": ["pls", "plz"], "you": ["u"], "your": ["ur"], "thanks": ["thx", "thnx"], "because": ["bc", "cuz"],
          "don't": ["dont"], "can't": ["cant"], "i'm": ["im"], "i've": ["ive"], "doesn't": ["doesnt"],
          "won't": ["wont"], "isn't": ["isnt"], "it's": ["its"], "haven't": ["havent"], "didn't": ["didnt"],
          "tomorrow": ["tmrw"], "people": ["ppl"], "message": ["msg"], "account": ["acc", "acct"],
          "about": ["abt"], "something": ["smth"]}
MISSPELL = {"receive": "recieve", "received": "recieved", "receiving": "recieving", "address": "adress",
            "account": "acount", "password": "pasword", "subscription": "subscribtion", "cancel": "cancle",
            "definitely": "definately", "separate": "seperate", "immediately": "immediatly", "tomorrow": "tommorow",
            "delivery": "delivary", "delivered": "deliverd", "package": "pakage", "business": "buisness",
            "which": "wich", "their": "thier", "until": "untill", "because": "becuase", "already": "allready",
            "warranty": "waranty", "invoice": "invoce", "charged": "chargd",
            "anymore": "any more", "replacement": "replacment", "tracking": "traking", "broken": "borken",
            "payment": "payemnt", "necessary": "neccessary", "unsubscribe": "unsubscibe", "notifications": "notifcations"}
KEYBOARD_NEIGHBOURS = {
    "a": "qsz", "b": "vgn", "c": "xdv", "d": "sfe", "e": "wrd", "f": "dgr", "g": "fht", "h": "gjy", "i": "uok",
    "j": "hku", "k": "jli", "l": "ko", "m": "nj", "n": "bmh", "o": "ipl", "p": "ol", "r": "etf", "s": "adw",
    "t": "ryg", "u": "yij", "v": "cfb", "w": "qes", "y": "tuh",
}
EMPHASIS = {"not", "never", "twice", "still", "now", "today", "again", "nothing", "asap", "wrong", "broken", "all"}


def on_text(text: str, fn) -> str:
    """Apply fn to the literal parts of a template, leaving {slots} untouched."""
    return "".join(part if SLOT_RE.fullmatch(part) else fn(part) for part in SLOT_RE.split(text))


def map_words(text: str, fn) -> str:
    return on_text(text, lambda part: re.sub(r"[A-Za-z']+", lambda m: fn(m.group(0)), part))


def keep_case(original: str, new: str) -> str:
    if original.isupper() and len(original) > 1:
        return new.upper()
    if original[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


def typo(rng: Random, word: str) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randint(1, len(word) - 2)
    op = rng.random()
    if op < 0.3:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]  # swap neighbours
    if op < 0.55:
        return word[:i] + word[i + 1:]  # drop a letter
    if op < 0.75:
        return word[:i] + word[i] + word[i:]  # double a letter
    near = KEYBOARD_NEIGHBOURS.get(word[i].lower())
    return word[:i] + rng.choice(near) + word[i + 1:] if near else word


def add_noise(rng: Random, text: str, style: dict) -> str:
    if style["abbrev"]:
        text = map_words(text, lambda w: keep_case(w, rng.choice(ABBREV[w.lower()]))
                         if w.lower() in ABBREV and rng.random() < 0.7 else w)
    if style["misspell"]:
        text = map_words(text, lambda w: keep_case(w, MISSPELL[w.lower()])
                         if w.lower() in MISSPELL and rng.random() < 0.6 else w)
    if style["typo_rate"]:
        text = map_words(text, lambda w: typo(rng, w) if rng.random() < style["typo_rate"] else w)
    if style["no_apostrophes"]:
        text = on_text(text, lambda p: p.replace("'", ""))
    if style["lower"]:
        text = on_text(text, str.lower)
    if style["no_punct"]:
        text = on_text(text, lambda p: re.sub(r"[.,!?;:\"()]", "", p))
        text = re.sub(r"[ \t]{2,}", " ", text).strip()
    if style["shout"] == "words":
        text = map_words(text, lambda w: w.upper() if w.lower() in EMPHASIS and rng.random() < 0.6 else w)
    elif style["shout"] == "sentence":
        parts = re.split(r"(?<=[.!?])\s+", text)
        k = rng.randrange(len(parts))
        parts[k] = on_text(parts[k], str.upper)
        text = " ".join(parts)
    elif style["shout"] == "all":
        text = on_text(text, str.upper)
    if style["exclaim"] and not style["no_punct"]:
        text = re.sub(r"[.?]?$", rng.choice(["!!", "!!!", "??", "?!", "..."]), text.rstrip(), count=1)
    return text


def fill(rng: Random, text: str, fillers: dict, lower_values: bool) -> str:
    cache: dict[str, str] = {}

    def value(match: re.Match) -> str:
        name = match.group(0)[1:-1]
        if name not in cache:
            cache[name] = fillers[name]()
        v = cache[name]
        if lower_values and name in ("product", "date", "device", "carrier", "plan", "month"):
            v = v.lower()
        return v

    return SLOT_RE.sub(value, text)


# --------------------------------------------------------------------------------------------
# 5. Assembly: labelled tickets
# --------------------------------------------------------------------------------------------


class Deck:
    """Draw items without replacement, reshuffling when empty, so every base message gets used."""

    def __init__(self, rng: Random, items: list[str]):
        self.rng, self.items, self.pile = rng, list(items), []

    def draw(self) -> str:
        if not self.pile:
            self.pile = list(self.items)
            self.rng.shuffle(self.pile)
        return self.pile.pop()


def norm_key(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9@#]+", " ", text.lower()).split())


def ticket_style(rng: Random) -> dict:
    lower = rng.random() < 0.28
    r = rng.random()
    return {
        "abbrev": rng.random() < 0.15,
        "misspell": rng.random() < 0.22,
        "typo_rate": 0.0 if r < 0.55 else (0.04 if r < 0.85 else 0.10),
        "no_apostrophes": rng.random() < 0.2,
        "lower": lower,
        "no_punct": rng.random() < (0.45 if lower else 0.05),
        "shout": rng.choices(["", "words", "sentence", "all"], [88, 6, 4, 2])[0],
        "exclaim": rng.random() < 0.07,
    }


def compose_ticket(rng: Random, label: str, written: date, decks: dict, short_decks: dict) -> str:
    style = ticket_style(rng)
    if rng.random() < SHORT_SHARE:
        parts = [short_decks[label].draw()]
        if rng.random() < 0.25:
            parts.insert(0, rng.choice(["hi", "hey", "Hi,", "hello"]))
        if rng.random() < 0.2:
            parts.append(rng.choice(["thx", "pls", "asap", "??", "thanks"]))
        style["lower"] = style["lower"] or rng.random() < 0.5
    else:
        length = rng.choices(["normal", "long", "very_long"], [81, 16, 3])[0]
        parts = []
        if rng.random() < 0.55:
            parts.append(rng.choice(OPENERS))
        if rng.random() < 0.08:
            parts.append(rng.choice(TONE_POLITE))
        base = decks[label].draw()
        if parts and parts[-1].endswith(",") and rng.random() < 0.4:
            base = base[:1].lower() + base[1:] if not base.startswith(("I ", "I'")) else base
        parts.append(base)
        n_detail = {"normal": 0, "long": rng.randint(1, 2), "very_long": rng.randint(3, 4)}[length]
        parts.extend(rng.sample(DETAIL[label], n_detail))
        n_context = {"normal": rng.choices([0, 1, 2], [72, 24, 4])[0], "long": rng.randint(0, 2),
                     "very_long": 2}[length]
        parts.extend(rng.sample(CALM_CONTEXT if label in CALM_LABELS else CONTEXT, n_context))
        if label != "feedback" and rng.random() < (0.12 if length == "normal" else 0.3):
            other = rng.choice([x for x in SECONDARY if x != label])
            parts.append(rng.choice(SECONDARY[other]))
        if label not in CALM_LABELS and rng.random() < 0.12:
            parts.append(rng.choice(TONE_ANGRY))
        if rng.random() < (0.5 if length == "normal" else 0.8):
            parts.append(rng.choice(CLOSERS))
    sep = "\n" if rng.random() < 0.1 else " "
    text = sep.join(parts)
    text = add_noise(rng, text, style)
    text = fill(rng, text, make_slots(rng, written), style["lower"] and rng.random() < 0.6)
    if rng.random() < 0.04:
        text += rng.choice(SIGNATURES)
    return text


def near_duplicate(rng: Random, text: str) -> str:
    """A tiny edit: punctuation, case or one word."""
    ops = [
        lambda t: t.rstrip(".!?") if t[-1:] in ".!?" else t + rng.choice([".", "!", "?"]),
        lambda t: t[:1].swapcase() + t[1:],
        lambda t: t.lower() if t != t.lower() else t.capitalize(),
        lambda t: re.sub(r"\bplease\b", "pls", t, count=1) if "please" in t else re.sub(r"\bpls\b", "please", t, count=1),
        lambda t: re.sub(r"\b(still|really|just)\s", "", t, count=1) if re.search(r"\b(still|really|just)\s", t)
        else re.sub(r"\b(I|i)\s", lambda m: m.group(0) + "really ", t, count=1),
        lambda t: re.sub(r"\b(Hi|Hello|hi|hello)\b", lambda m: {"Hi": "Hello", "Hello": "Hi", "hi": "hello",
                                                                   "hello": "hi"}[m.group(0)], t, count=1),
        lambda t: t.replace(", ", " ", 1),
        lambda t: re.sub(r"\b(Thanks|thanks|Thank you|thank you)\b", lambda m: {"Thanks": "Thank you",
                         "thanks": "thank you", "Thank you": "Thanks", "thank you": "thanks"}[m.group(0)], t, count=1),
    ]
    for _ in range(20):
        new = rng.choice(ops)(text)
        if new != text and new.strip():
            return new
    return text + "!"


TICKET_START, TICKET_END = date(2026, 1, 5), date(2026, 8, 30)
HOUR_WEIGHTS = [1, 1, 1, 1, 1, 2, 3, 5, 8, 10, 10, 9, 8, 9, 9, 8, 7, 6, 6, 6, 5, 4, 3, 2]


def random_time(rng: Random, start: date, end: date, weekend_weight: float) -> datetime:
    days = (end - start).days + 1
    while True:
        d = start + timedelta(days=rng.randrange(days))
        if d.weekday() < 5 or rng.random() < weekend_weight:
            break
    hour = rng.choices(range(24), HOUR_WEIGHTS)[0]
    return datetime(d.year, d.month, d.day, hour, rng.randrange(60), rng.randrange(60))


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_tickets(rng: Random) -> list[dict]:
    decks = {label: Deck(rng, msgs) for label, msgs in BASE.items()}
    short_decks = {label: Deck(rng, msgs) for label, msgs in SHORT.items()}
    seen_keys: set[str] = set()
    rows: list[dict] = []  # without id yet
    for label, target in TARGET_COUNTS.items():
        n_exact = round(target * EXACT_DUP_SHARE)
        n_near = round(target * NEAR_DUP_SHARE)
        unique: list[dict] = []
        while len(unique) < target - n_exact - n_near:
            ts = random_time(rng, TICKET_START, TICKET_END, 0.6)
            text = compose_ticket(rng, label, ts.date(), decks, short_decks)
            key = norm_key(text)
            if key in seen_keys:
                continue
            seen_keys.add(key)
            unique.append({"text": text, "label": label, "ts": ts})
        extra = []
        for original in rng.sample(unique, n_exact + n_near):
            text = original["text"] if len(extra) < n_exact else near_duplicate(rng, original["text"])
            ts = min(original["ts"] + timedelta(minutes=rng.randint(3, 60 * 24 * 4)),
                     datetime(2026, 8, 30, 23, 59, 0))
            extra.append({"text": text, "label": label, "ts": ts})
        rows.extend(unique + extra)
    rows.sort(key=lambda r: (r["ts"], r["label"], r["text"]))
    return [{"id": f"t-{i:05d}", "text": r["text"], "label": r["label"], "source": "synthetic-v1",
             "created_at": iso(r["ts"])} for i, r in enumerate(rows, start=1)]


# --------------------------------------------------------------------------------------------
# 6. Data: production traffic (fresh texts, phone style) and the shift it contains
# --------------------------------------------------------------------------------------------

PROD_BASE = {
    "billing": [
        "why did u charge me {amount} twice", "got charged again after i already paid",
        "theres a charge from you i dont recognise {amount}", "invoice total is wrong can someone look at it",
        "need the invoice for last month pls", "card got charged {amount} but the order says {amount2}",
        "how do i change the card you bill", "charged for premium but im on basic??",
        "my bank shows 2 payments for the same order {order}", "the price went up on my bill and no one told me",
        "where can i download my invoices", "paid with gift card but still got charged full price",
        "billed in usd but im in the uk", "sub renewed at a higher price than advertised",
        "payment declined but the money was taken", "Hi, the VAT on invoice {invoice} looks wrong, can you check?",
        "what is the {amount} charge from {date}", "i was billed after my trial ended but i never got a reminder",
        "can i get a receipt with my company name on it", "the discount didnt apply at checkout and i paid full price",
        "u took {amount} from my card twice for one order", "how do i update the billing address on invoices",
    ],
    "refund": [
        "still waiting on my refund from {date}", "returned it weeks ago wheres my money",
        "refund approved but nothing on my card yet", "can i get money back for {order}",
        "want a refund not store credit", "how long till the refund shows up",
        "only got half refunded??", "sent the item back, tracking {tracking}, refund?",
        "refund to paypal please not card", "i want my money back this is a joke",
        "was told refund in 5 days its been 12", "is the return window still open? want a refund for the {product}",
        "Hello, my refund for {order} says processed but the bank has nothing.",
        "my refund went to an old card what now", "how do i send something back for a refund",
        "refund still pending after 3 weeks", "got store credit instead of a refund, i want the money",
        "u refunded {amount} but i paid {amount2}", "the return label costs money?? i just want my refund",
    ],
    "account_access": [
        "cant log in at all", "password reset mail never comes", "locked out need help",
        "2fa code not coming to my phone", "says wrong password but its right", "new phone no authenticator cant get in",
        "acct locked after too many tries", "reset link expired straight away", "log in with google not working",
        "Hi, I can't get into my account, the code goes to my old number {phone}.",
        "login email never arrives", "someone changed my password not me", "how do i log in without my old email",
        "verification code always invalid", "it says account suspended, why",
    ],
    "cancellation": [
        "cancel my sub", "how do i stop the auto renew", "pls cancel order {order}", "cancel before it renews on {date}",
        "i want to cancel my plan now", "cant find the cancel button anywhere", "end my membership thanks",
        "cancel the monthly box pls", "dont renew me", "cancel everything on my account",
        "cancelling bc of the price increase", "is it too late to cancel {order}",
        "stop charging me i want to cancel", "cancel the trial before it charges me", "pls end my contract asap",
        "cancel my premium, keep the free one", "how much notice do i need to cancel",
    ],
    "shipping": [
        "order {order} not here yet", "tracking hasnt updated in days", "says delivered but nothing here",
        "package went to the wrong address", "when will {order} ship", "delivery is late again",
        "driver never showed up", "parcel stuck in customs", "no tracking number for my order",
        "Hi, my order from {date} still hasn't arrived, can you check?",
        "parcel says out for delivery since yesterday", "can i change the delivery address on {order}",
        "my order is still processing after 5 days", "courier left it somewhere, cant find it",
        "only half my order came", "the tracking link is broken",
    ],
    "damaged_item": [
        "arrived broken", "got the wrong item", "box crushed and {product} cracked", "missing parts in the box",
        "{product} dead on arrival", "wrong size sent", "screen scratched straight out of the box",
        "only got 1 of the 2 items", "item was leaking when it arrived", "packaging ripped and the {product} is bent",
        "The {product} I received has a crack along the side, order {order}.",
        "sent me the wrong colour", "{product} wont turn on out of the box", "the glass was smashed in the box",
        "manual and cable missing", "it came used, scratches everywhere",
    ],
    "technical_issue": [
        "app keeps crashing", "site not loading for me", "getting error {error}", "checkout button does nothing",
        "notifications not working", "page blank on my phone", "search is broken, no results",
        "cant upload photos, spins forever",
        "export gives an empty file", "website super slow today", "video wont play, black screen",
        "the filter on my orders does nothing", "dark mode makes text unreadable",
    ],
    "product_question": [
        "does it work with android", "what size for 180cm", "is the {product} waterproof", "any other colours?",
        "battery life on the {product}?", "does it come with a charger", "is the {product} back in stock soon",
        "can i use it abroad", "dishwasher safe?", "difference between pro and standard?",
        "Hi, does the {product} work without wifi?",
        "whats the warranty on the {product}", "does it fit in a carry on", "is it vegan leather",
        "do u ship to canada",
    ],
    "feedback": [
        "great service thank u", "support was super helpful today", "your app used to be better",
        "delivery was fast, love it", "the new update is awful", "customer service is terrible lately",
        "pls add dark mode", "thanks {agent} for the help", "way too many emails from you",
        "really happy with my {product}",
        "ur packaging is way too big", "the chat bot is useless", "love the new colours",
        "phone hold times are a joke", "well done on the fast shipping",
    ],
    "account_update": [
        "change my address pls", "new phone number is {phone}", "unsubscribe me from emails",
        "update my email to {email}", "stop the sms pls", "change the name on my account",
        "remove my old address from my profile", "turn off marketing texts", "update my surname, i got married",
        "change my language to spanish pls", "add a second address to my account", "fix the spelling of my name",
        "stop the weekly digest emails", "change the contact email to {email}",
    ],
}

# Event 1 (from week 2): an outage at the carrier SwiftPost. Event 2 (from week 4): app version 5.0
# breaks sync and login. Each message is drawn instead of a generic one with EVENT_SHARE[label][week].
PROD_EVENT = {
    "shipping": [
        "is swiftpost down? tracking site wont load", "swiftpost shows no movement since {date}",
        "my parcel has been at the swiftpost hub for a week", "all my swiftpost deliveries are stuck",
        "swiftpost says delayed due to network disruption, when will i get it",
        "heard swiftpost has problems, can u ship with someone else", "order {order} stuck with swiftpost need it asap",
        "tracking says in transit for 9 days", "the courier outage is a mess where is my stuff",
        "can you resend my order with another carrier", "still nothing. swiftpost says contact the sender",
        "delivery pushed back 3 times now", "package in limbo, carrier website error",
        "did swiftpost lose my parcel? tracking {tracking}", "is there a delay with deliveries right now",
        "ordered 2 weeks ago still not left the warehouse", "estimated delivery changed to unknown??",
        "my package is at a depot 300km away and not moving",
        "Hello, SwiftPost tracking for {order} has said 'delayed' for 10 days. Please help.",
        "swiftpost driver never came, tracking says attempted", "why are you still using swiftpost",
        "parcel stuck in sorting centre for 6 days", "the tracking number {tracking} shows nothing at all",
        "my delivery is stuck because of the carrier problem, any update",
    ],
    "technical_issue": [
        "since the update the app crashes on launch", "after updating to 5.0 nothing syncs",
        "new update deleted my saved lists", "sync broken since yesterdays update",
        "app stuck on white screen after update", "my orders dont show in the app since the update",
        "the latest version keeps freezing", "update broke the app on my {device}",
        "sync between phone and laptop stopped after the update", "cart empties itself in the new app version",
        "app says offline since the update even on wifi", "new version wont open at all",
        "can i roll back the update? everything is broken", "error {error} every time i open the app now",
        "5.0 is a disaster half the buttons dont work", "widgets stopped updating after latest version",
        "push notifications gone since the update", "data not syncing to my watch anymore since the app update",
        "the new app version crashes when i open my orders", "sync stuck at 0% since the update",
        "update 5.0 wiped my settings", "app freezes on my {device} since the last update",
        "checkout crashes in the new version",
    ],
    "account_access": [
        "since the update it wont accept my password", "app update logged me out and now i cant get back in",
        "login loop after updating the app", "face id login gone after update and password doesnt work",
        "after the 5.0 update it says session expired every time i log in",
        "updated the app, now it says account not found",
    ],
}

GDPR = [
    "please delete all my data", "send me a copy of the data you hold on me",
    "this is a data subject access request under article 15 gdpr",
    "i want to exercise my right to erasure", "delete my account and all the personal information you have on me",
    "what personal data do you store about me", "I request a full export of my personal data in a machine readable format.",
    "under gdpr i want to know who you shared my data with", "please erase my data, i no longer consent to processing",
    "right to be forgotten request for {email}", "DSAR: please provide all data linked to {email}",
    "how do i download all my data", "i want all my info removed from your systems",
    "Dear Data Protection Officer, I am writing to request access to the personal data you hold about me, "
    "pursuant to Article 15 of the GDPR. Please include the purposes of processing, the recipients and how long "
    "you will keep it. My account email is {email}. I look forward to your reply within one month.",
    "do you still have my data after i closed my account? if so delete it", "pls export my data",
    "delete everything you have on me", "Id like a copy of my order history and all personal details you store, as per my GDPR rights.",
    "under gdpr i request deletion of my personal information", "you have 30 days to respond to this subject access request",
    "remove my data from your marketing lists AND your database", "send me my data", "data deletion request",
    "how long do you keep my data? i want it deleted", "please confirm in writing that my personal data has been erased",
    "gdpr request", "i want to see what data your app collected about me",
    "data portability request - send my data as csv or json", "who is your data protection officer? i want my data deleted",
    "i never agreed to you storing my card details, delete them and all my data",
    "Hello, under Article 17 GDPR I ask you to erase all personal data relating to me, including backups. "
    "Account: {email}, phone {phone}.",
    "erase my personal data pls", "subject access request for {first} {last}, email {email}",
    "can u send me everything u know about me", "I want to know what data you have on me and then delete it",
    "gdpr data export not working in settings, pls send it manually", "delete my data, not just the account",
    "Art. 15 request: copy of all personal data + list of third parties you sold it to",
    "please anonymise my order history and remove my address and phone",
    "request to delete all recordings of my calls with your support",
    "dsar for account {email} please", "i want my data deleted from all your systems and partners",
    "pls tell me what info u store about me", "requesting erasure of my personal data under gdpr art 17",
    "export all my personal data and email it to me", "delete my data, i closed the account last year",
    "send me a copy of everything you have on file about me incl call notes",
]

WEEKS = 8
PROD_START = date(2026, 9, 1)
WEEK_ROWS = [135, 140, 148, 152, 158, 162, 165, 172]
GDPR_SHARE = [0.0, 0.0, 0.04, 0.08, 0.13, 0.18, 0.22, 0.26]
BASE_MIX = {"billing": 0.115, "refund": 0.10, "account_access": 0.11, "cancellation": 0.095, "shipping": 0.125,
            "damaged_item": 0.09, "technical_issue": 0.105, "product_question": 0.095, "feedback": 0.08,
            "account_update": 0.085}
MIX_MULTIPLIER = {
    "shipping": [1.0, 1.6, 2.3, 2.8, 3.1, 3.3, 3.4, 3.5],
    "technical_issue": [1.0, 1.0, 1.2, 2.4, 3.0, 3.3, 3.4, 3.5],
    "account_access": [1.0, 1.0, 1.0, 1.4, 1.6, 1.6, 1.5, 1.5],
    "product_question": [1.0, 0.85, 0.7, 0.55, 0.45, 0.35, 0.3, 0.25],
}
EVENT_SHARE = {
    "shipping": [0.0, 0.35, 0.55, 0.6, 0.6, 0.55, 0.5, 0.45],
    "technical_issue": [0.0, 0.0, 0.0, 0.55, 0.65, 0.65, 0.6, 0.55],
    "account_access": [0.0, 0.0, 0.0, 0.35, 0.45, 0.45, 0.4, 0.35],
}


def week_counts(week: int) -> dict[str, int]:
    """Exact rows per kind in one week (largest remainder), 'gdpr_request' being the new kind."""
    total = WEEK_ROWS[week]
    weights = {k: v * MIX_MULTIPLIER.get(k, [1.0] * WEEKS)[week] for k, v in BASE_MIX.items()}
    scale = (1.0 - GDPR_SHARE[week]) / sum(weights.values())
    shares = {k: w * scale for k, w in weights.items()}
    shares["gdpr_request"] = GDPR_SHARE[week]
    raw = {k: s * total for k, s in shares.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (-(raw[k] - counts[k]), k))[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def prod_style(rng: Random, week: int) -> dict:
    t = week / (WEEKS - 1)  # 0 -> 1 over the eight weeks
    r = rng.random()
    return {
        "abbrev": rng.random() < 0.2 + 0.3 * t,
        "misspell": rng.random() < 0.2 + 0.25 * t,
        "typo_rate": 0.0 if r < 0.5 - 0.25 * t else (0.05 if r < 0.85 - 0.1 * t else 0.12),
        "no_apostrophes": rng.random() < 0.3 + 0.4 * t,
        "lower": rng.random() < 0.45 + 0.4 * t,
        "no_punct": rng.random() < 0.25 + 0.45 * t,
        "shout": rng.choices(["", "words", "sentence", "all"], [90, 5, 3, 2])[0],
        "exclaim": rng.random() < 0.05,
    }


def compose_prod(rng: Random, kind: str, week: int, written: date, decks: dict) -> str:
    t = week / (WEEKS - 1)
    style = prod_style(rng, week)
    if kind in PROD_EVENT and rng.random() < EVENT_SHARE[kind][week]:
        base = decks["event:" + kind].draw()
    else:
        base = decks[kind].draw()
    if rng.random() < 0.45 - 0.3 * t and base[:1].islower():  # tidy: capitalise and end the sentence
        base = base[:1].upper() + base[1:] + ("" if base[-1:] in "?!." else ".")
    parts = [base]
    if rng.random() < 0.3 - 0.2 * t:
        parts.insert(0, rng.choice(OPENERS))
    if rng.random() < 0.12 - 0.07 * t:
        parts.append(rng.choice(CONTEXT))
    if rng.random() < 0.06:
        parts.append(rng.choice(TONE_ANGRY))
    if rng.random() < 0.3 - 0.2 * t:
        parts.append(rng.choice(CLOSERS))
    text = add_noise(rng, " ".join(parts), style)
    text = fill(rng, text, make_slots(rng, written), style["lower"] and rng.random() < 0.7)
    if rng.random() < 0.03 + 0.05 * t:
        text += rng.choice(SIGNATURES[:2])
    return text


PROD_HOUR_WEIGHTS = [2, 1, 1, 1, 1, 2, 4, 7, 9, 9, 8, 8, 9, 8, 7, 7, 7, 8, 9, 10, 10, 9, 6, 4]


def build_traffic(rng: Random, ticket_keys: set[str]) -> list[dict]:
    decks = {k: Deck(rng, v) for k, v in PROD_BASE.items()}
    decks.update({"event:" + k: Deck(rng, v) for k, v in PROD_EVENT.items()})
    decks["gdpr_request"] = Deck(rng, GDPR)
    rows = []
    for week in range(WEEKS):
        for kind, n in week_counts(week).items():
            for _ in range(n):
                day = PROD_START + timedelta(days=7 * week + rng.randrange(7))
                while True:  # never reuse a training ticket, not even up to case/punctuation
                    text = compose_prod(rng, kind, week, day, decks)
                    if norm_key(text) not in ticket_keys:
                        break
                hour = rng.choices(range(24), PROD_HOUR_WEIGHTS)[0]
                ts = datetime(day.year, day.month, day.day, hour, rng.randrange(60), rng.randrange(60))
                rows.append({"ts": ts, "text": text, "kind": kind, "week": week + 1})
    rows.sort(key=lambda r: (r["ts"], r["kind"], r["text"]))
    for i, r in enumerate(rows, start=1):
        r["request_id"] = f"r-{i:06d}"
    return rows


def pool_keys(text: str) -> set[str]:
    """The texts a pool ticket must not share with a training ticket: `norm_key`, and `norm_key`
    with apostrophes dropped ("can't" == "cant"), as curation's de-duplication compares them."""
    return {norm_key(text), norm_key(text.replace("'", ""))}


# Below curation's contamination_threshold (0.8) and the 0.7 its docs suggest as the stricter one.
POOL_MAX_SIMILARITY = 0.7


def shingle_set(text: str) -> set[str]:
    """Character 5-grams as finetune_loop.core.data.dedup takes them (NFKC, casefold, apostrophes
    dropped, other punctuation a space), restated here so this script needs the standard library only."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    text = " ".join(re.sub(r"[^\w\s]", " ", re.sub(r"['\u2019\u2018`]", "", text)).split()) or text
    return {text} if len(text) <= 5 else {text[i : i + 5] for i in range(len(text) - 4)}


def build_pool(rng: Random, ticket_texts: list[str]) -> list[dict]:
    """Fresh labelled tickets from the same generator as tickets.jsonl, none of whose texts (up to
    case, punctuation and apostrophes) is a ticket's or another pool row's, and none a near
    duplicate of a ticket (Jaccard of character 5-grams at POOL_MAX_SIMILARITY or above, curation's
    measure): simulated traffic must not replay what the model trained on."""
    taken = set().union(*(pool_keys(t) for t in ticket_texts))
    ticket_shingles = [shingle_set(t) for t in ticket_texts]

    def near_a_ticket(text: str) -> bool:
        mine = shingle_set(text)
        return any(len(mine & other) >= POOL_MAX_SIMILARITY * len(mine | other) for other in ticket_shingles)
    decks = {label: Deck(rng, msgs) for label, msgs in BASE.items()}
    short_decks = {label: Deck(rng, msgs) for label, msgs in SHORT.items()}
    rows: list[dict] = []
    for label, target in POOL_COUNTS.items():
        made = 0
        while made < target:
            ts = random_time(rng, POOL_START, POOL_END, 0.6)
            text = compose_ticket(rng, label, ts.date(), decks, short_decks)
            keys = pool_keys(text)
            if keys & taken or near_a_ticket(text):
                continue
            taken |= keys
            rows.append({"text": text, "label": label, "ts": ts})
            made += 1
    rows.sort(key=lambda r: (r["ts"], r["label"], r["text"]))
    return [{"id": f"p-{i:05d}", "text": r["text"], "label": r["label"], "source": "synthetic-v1",
             "created_at": iso(r["ts"])} for i, r in enumerate(rows, start=1)]


# Written in the same months as the production traffic it stands in for.
POOL_START, POOL_END = date(2026, 9, 1), date(2026, 10, 26)


# --------------------------------------------------------------------------------------------
# 7. Output
# --------------------------------------------------------------------------------------------


def render() -> tuple[str, str, list[dict], str]:
    rng = Random(SEED)
    tickets = build_tickets(rng)
    traffic = build_traffic(rng, {norm_key(t["text"]) for t in tickets})
    pool = build_pool(Random(POOL_SEED), [t["text"] for t in tickets])
    tickets_text = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tickets)
    traffic_text = "".join(json.dumps({"request_id": r["request_id"], "timestamp": iso(r["ts"]), "text": r["text"]},
                                      ensure_ascii=False) + "\n" for r in traffic)
    pool_text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pool)
    return tickets_text, traffic_text, traffic, pool_text


def print_stats(tickets_text: str, traffic: list[dict], pool_text: str) -> None:
    for name, text in (("tickets.jsonl", tickets_text), ("traffic_pool.jsonl", pool_text)):
        labels = Counter(json.loads(line)["label"] for line in text.splitlines())
        print(f"{name} rows per label:")
        for label in TARGET_COUNTS:
            print(f"  {label:17s} {labels[label]}")
        print(f"  {'total':17s} {sum(labels.values())}")
    print("production_traffic.jsonl per week (rows, gdpr_request rows = the kind no label covers):")
    for week in range(1, WEEKS + 1):
        kinds = Counter(r["kind"] for r in traffic if r["week"] == week)
        total = sum(kinds.values())
        print(f"  week {week}: rows={total:4d} gdpr_request={kinds['gdpr_request']:3d} "
              f"({kinds['gdpr_request'] / total:5.1%}) shipping={kinds['shipping']:3d} "
              f"technical_issue={kinds['technical_issue']:3d} product_question={kinds['product_question']:3d}")
    print(f"  total: {len(traffic)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; verify the files on disk match a fresh run and print the counts")
    args = parser.parse_args(argv)
    tickets_text, traffic_text, traffic, pool_text = render()
    files = ((TICKETS_FILE, tickets_text), (TRAFFIC_FILE, traffic_text), (POOL_FILE, pool_text))
    if args.check:
        ok = True
        for path, text in files:
            same = path.is_file() and path.read_bytes() == text.encode("utf-8")
            ok &= same
            print(f"{path.name}: {'identical to a fresh run' if same else 'DIFFERS from a fresh run'}")
        print_stats(tickets_text, traffic, pool_text)
        return 0 if ok else 1
    for path, text in files:
        path.write_bytes(text.encode("utf-8"))
    print(f"wrote {', '.join(str(path) for path, _ in files)}")
    print_stats(tickets_text, traffic, pool_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
